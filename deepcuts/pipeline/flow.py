"""The single-shot lottery-ticket flow, in order:

dense fine-tune -> score -> masks -> rewind -> masked fine-tune (fresh optimiser, best dev epoch)
-> record. Each stage is a call into the module that owns it; shared stages go through the cache.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from deepcuts.pruning import budget as B
from deepcuts.pruning import schedule as G
from deepcuts.cache import keys as K
from deepcuts.pruning import masks as M
from deepcuts.pipeline import results as outputs
from deepcuts.data.glue import GlueDataModule
from deepcuts.training.distill import TEACHER_FILE, DistillSettings, Teacher, teacher_outputs
from deepcuts.config.errors import ConfigError
from deepcuts.runtime.logs import quiet_third_party
from deepcuts.models.module import build_model, load_tokenizer
from deepcuts.runtime.progress import progress_settings
from deepcuts.training.rewind import REWIND_FILE, RewindPoint, replay, steps_per_epoch
from deepcuts.scoring.passes import run_scoring, scoring_batches, scoring_state
from deepcuts.cache.store import StageCache, config_key, read_tensors, write_tensors
from deepcuts.pruning.structured import Structure
from deepcuts.scoring.trace import TRACE, MovementTrace
from deepcuts.runtime.tracking import tracking
from deepcuts.training.fine_tune import check_selection, check_trainer, fine_tune

log = logging.getLogger(__name__)
UNITS = "units.safetensors"  # a scores entry's per-unit scores, when the strategy has them
STRATEGY_DIR = Path(__file__).resolve().parents[2] / "conf" / "strategy"


def instantiate_checked(node: DictConfig):
    """``instantiate``, re-raising our own ConfigError unwrapped so its message reaches the user."""
    try:
        return instantiate(node)
    except InstantiationException as err:
        if isinstance(err.__cause__, ConfigError):
            raise err.__cause__ from None
        raise


def scoring_config(cfg: DictConfig, strategy) -> DictConfig:
    """The config whose strategy computes the scores: the run's own, or, for a control that
    reuses another strategy's scores (``strategy.of``), the run's config with that strategy."""
    if strategy.of is None:
        return cfg
    path = STRATEGY_DIR / f"{strategy.of}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in STRATEGY_DIR.glob("*.yaml")))
        raise ConfigError(f"strategy.of={strategy.of!r} names no strategy; use one of: {names}.")
    other = copy.deepcopy(cfg)
    with open_dict(other):
        other.strategy = OmegaConf.load(path)
    return other


def resolve_keep_fraction(cfg: DictConfig, own_budget: B.Budget) -> float:
    """``keep_fraction`` when given (it overrides the ratio), else from ``ratio``/``ratio_basis``."""
    if cfg.get("keep_fraction") is not None:
        f = cfg.keep_fraction
        if not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise ConfigError(f"keep_fraction must be a number in (0, 1], got {f!r}.")
        return float(f)
    return B.budget_for(cfg.ratio_basis, own_budget).keep_fraction(cfg.ratio)


def score(cfg: DictConfig, model, prunable: dict, scorer, loader) -> dict:
    """One scoring pass with the run's settings (the configured batch count: run_scoring caps
    it at one epoch and says so when it does)."""
    return run_scoring(model, prunable, scorer, loader, cfg.scoring.batches, cfg.scoring.dropout,
                       trainer_kwargs={"accelerator": cfg.trainer.accelerator, "devices": 1,
                                       "enable_progress_bar": cfg.trainer.get("enable_progress_bar", True)},
                       progress=cfg.get("progress"))


def rescore(cfg: DictConfig, model, scored: DictConfig, data: GlueDataModule) -> dict:
    """The scores of the current model by a fresh instance of the scoring strategy (k-shot's
    later rounds; not cached: they depend on the rounds before). A fresh loader each time, so
    the batches are those of the first round's pass whether that pass ran here or was cached;
    on the CPU, as cached scores are."""
    scorer = instantiate_checked(scored.strategy)
    prunable = B.prunable_parameters(model, cfg.prune.include, cfg.prune.get("exclude", []))
    loader = data.scoring_dataloader(cfg.seed) if scorer.needs_data else None
    return {n: s.detach().cpu() for n, s in score(cfg, model, prunable, scorer, loader).items()}


def teacher_device(trainer_cfg: DictConfig) -> str:
    """Where the teacher's one pass over the train set runs: the fine-tunes' GPU when there is one."""
    import torch

    wants_gpu = str(trainer_cfg.get("accelerator", "auto")) in ("gpu", "cuda", "auto")
    return "cuda" if wants_gpu and torch.cuda.is_available() else "cpu"


def run(cfg: DictConfig) -> dict:
    quiet_third_party()
    out = outputs.prepare_output_dir(cfg.output_dir)
    t0, timings = time.perf_counter(), {}
    # Everything that can fail on bad input fails here, before any training.
    point = RewindPoint.parse(cfg.rewind)
    distill = DistillSettings.from_cfg(cfg.get("distill"))
    check_selection(cfg)
    check_trainer(cfg.trainer)
    progress_settings(cfg.get("progress"))
    cache = StageCache(cfg.cache_dir, enabled=cfg.cache)
    strategy = instantiate_checked(cfg.strategy)
    scored = scoring_config(cfg, strategy)  # controls such as shuffled score with another strategy
    scorer = strategy if scored is cfg else instantiate_checked(scored.strategy)
    trace_movement = bool(cfg.scoring.get("trace_movement", True))
    if scorer.from_dense and not trace_movement:
        raise ConfigError(f"strategy {scorer.name!r} reads the movement trace of the dense fine-tune: set scoring.trace_movement=true.")
    if scorer.from_dense and cfg.epochs_dense < 1:
        raise ConfigError(f"strategy {scorer.name!r} is traced during the dense fine-tune: it needs epochs_dense >= 1, got {cfg.epochs_dense}.")
    if scorer.of is not None:
        raise ConfigError(f"strategy.of={strategy.of!r} is itself a control of another strategy; name a scoring strategy.")
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    model = build_model(cfg, tokenizer)
    prunable = B.prunable_parameters(model, cfg.prune.include, cfg.prune.get("exclude", []))
    own_budget = B.model_budget(model, prunable)
    keep_fraction = resolve_keep_fraction(cfg, own_budget)
    structure = Structure.from_cfg(cfg.get("structure"), model, strategy, scorer, prunable, keep_fraction)  # None: masks
    if cfg.scoring.batches is not None and int(cfg.scoring.batches) <= 0:
        raise ConfigError(f"scoring.batches must be >= 1 (or null for the default), got {cfg.scoring.batches}.")
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}  # a copy, not a view
    holdout = cfg.selection_fraction if cfg.selection == "holdout" else None
    data = GlueDataModule(
        tokenizer, **OmegaConf.to_container(cfg.data, resolve=True), seed=cfg.seed, holdout_fraction=holdout
    )
    data.setup()
    model.set_eval_sets(data.eval_sets())  # the dev set, the holdout slice, extra dev sets
    loader = data.scoring_dataloader(cfg.seed) if scorer.needs_data else None
    n_batches = scoring_batches(scorer, cfg.scoring.batches, loader)
    at = scoring_state(cfg.scoring.get("at"), scorer)
    shots = G.check_shots(cfg, strategy, scorer, structure is not None, at)
    point.check(cfg.epochs_dense, steps_per_epoch(len(data.train_dataloader()),
                                                  cfg.trainer.get("accumulate_grad_batches", 1)))
    if point.late and (cfg.trainer.get("limit_train_batches") is not None or cfg.trainer.get("max_steps", -1) != -1
                       or str(cfg.trainer.get("devices", 1)) not in ("1", "auto")):
        raise ConfigError(f"rewind={point.spec()} replays the dense fine-tune on one device with whole epochs; "
                          "it does not support trainer.devices > 1, limit_train_batches or max_steps.")
    # nothing needs the dense model: no scores of it, no rewind into it, no teacher
    skip_dense = at == "pretrained" and point.initial and not distill.enabled
    digest = K.state_digest(initial)
    specs = K.stage_specs(cfg, digest, scorer, n_batches, strategy, scored, at, keep_fraction)
    key = K.run_key(specs)
    if cfg.resume:  # a finished job is never redone: same folder, or the same config elsewhere
        if outputs.is_complete(out, key, cfg.save_model):
            log.info("%s already holds complete results: skipping (resume=false to redo)", out)
            return outputs.read_results(out)
        if (done := cache.lookup("runs", specs["run"])) is not None:
            log.info("identical job finished before (%s): copying its results", done)
            return outputs.restore_run(done, out, cfg)
    timings["setup"] = time.perf_counter() - t0

    with tracking(cfg, out) as tracker:
        # 1. Dense fine-tune (shared by every strategy and ratio); the entry keeps its start and
        #    the movement trace of its optimiser steps. Skipped when nothing needs it.
        t = time.perf_counter()
        seeded = {k: v for k, v in initial.items() if not cfg.model.pretrained or k.startswith("head.")}

        def dense_stage(d: Path) -> None:
            traces = [MovementTrace(list(prunable), d / TRACE)] if trace_movement else []
            result = fine_tune(model, data, cfg, cfg.epochs_dense, out, "dense",  # seeded inside
                               loggers=tracker.loggers("dense", use_wandb=False), callbacks=traces)
            outputs.save_dense(d, model, result, seeded, digest)

        if skip_dense:
            dense_dir, dense = None, outputs.skipped_dense(cache.peek("dense", specs["dense"], "metrics.json"))
        else:
            dense_dir = cache.get_or_build("dense", specs["dense"], dense_stage, work=out / "dense")
            dense = outputs.load_dense(dense_dir, model)
        timings["dense"] = time.perf_counter() - t

        # 1b. What the later stages take from the dense fine-tune besides its weights: the
        #     teacher's outputs (distill) and the weights at a late rewind point (replayed).
        teacher, lever_specs = None, {}
        if distill.enabled:
            t = time.perf_counter()
            lever_specs["teacher"] = {"dense": specs["dense"], "code": K.code_digest(("deepcuts.training.distill",))}
            teacher_dir = cache.get_or_build(
                "teacher", lever_specs["teacher"],
                lambda d: write_tensors(d / TEACHER_FILE, {"outputs": teacher_outputs(
                    model, data.train_eval_dataloader(), teacher_device(cfg.trainer))}),
                work=out / "teacher")
            teacher = Teacher(read_tensors(teacher_dir / TEACHER_FILE)["outputs"], distill)
            timings["teacher"] = time.perf_counter() - t
        rewind_state = None
        if point.late:
            t = time.perf_counter()

            def rewind_stage(d: Path) -> None:
                write_tensors(d / REWIND_FILE, replay(model, data, cfg, point, outputs.initial_state(dense_dir, initial), d))
                outputs.load_dense(dense_dir, model)  # back to the dense model for scoring

            lever_specs["rewind"] = {"dense": specs["dense"], "point": point.spec(), "code": K.code_digest(("deepcuts.training.rewind",))}
            rewind_dir = cache.get_or_build("rewind", lever_specs["rewind"], rewind_stage, work=out / "rewind")
            rewind_state = read_tensors(rewind_dir / REWIND_FILE)
            timings["rewind"] = time.perf_counter() - t

        # 2. Scores (shared by every ratio and by the layer/global variants of a strategy), at the
        #    fine-tuned model, at the initial one (scoring.at=pretrained), or traced while training.
        t = time.perf_counter()

        def score_stage(d: Path) -> None:
            if scorer.from_dense:
                scores, meta = read_tensors(dense_dir / TRACE), outputs.tensor_metadata(dense_dir / TRACE)
            else:
                if at == "pretrained" and dense_dir is not None:
                    model.load_state_dict(outputs.initial_state(dense_dir, initial))
                scores = score(cfg, model, prunable, scorer, loader)
                meta = {"batches": str(scorer.batches_seen)}
                if scorer.units:  # per-unit scores (structure.group_score=native)
                    write_tensors(d / UNITS, scorer.units)
                if at == "pretrained" and dense_dir is not None:
                    outputs.load_dense(dense_dir, model)
            write_tensors(d / "scores.safetensors", scores, metadata=meta)

        score_dir = cache.get_or_build("scores", specs["scores"], score_stage, work=out / "scores")
        scores = read_tensors(score_dir / "scores.safetensors")
        units = read_tensors(score_dir / UNITS) if (score_dir / UNITS).is_file() else None
        timings["scoring"] = time.perf_counter() - t

        model.teacher = teacher  # every masked fine-tune learns from it (None: no distillation)

        # 2b. k-shot: rounds 1..k-1 prune to the schedule's fraction and fine-tune shortly; each
        #     later round re-scores the current model, among the weights still kept.
        rounds = []
        for t_round, fraction in enumerate(G.keep_schedule(keep_fraction, shots)[:-1], 1):
            t = time.perf_counter()
            masks = M.build_masks(scores, fraction, scorer.scope)
            M.apply_masks(model, masks)
            shot = fine_tune(model, data, cfg, cfg.shot_epochs, out, f"shot{t_round}",
                             loggers=tracker.loggers(f"shot{t_round}", use_wandb=False))
            M.remove_masks(model)  # zeros folded in: the next round scores a plain model
            scores = G.restrict(rescore(cfg, model, scored, data), masks)  # what the next round prunes by
            rounds.append({"round": t_round, "keep_fraction": fraction, "kept": int(sum(m.sum() for m in masks.values())),
                           "dev": shot["selected"], "seconds": time.perf_counter() - t})
        if rounds:
            timings["shots"] = sum(r["seconds"] for r in rounds)

        # 3. Masks (or whole heads and neurons), 4. rewind to the dense entry's own initial state
        #    (or a late point of the dense fine-tune), then attach the masks (or remove the
        #    groups: the rest runs on the smaller model).
        if structure is None:
            masks = strategy.transform_masks(M.build_masks(scores, keep_fraction, scorer.scope))
        else:
            masks = structure.select(scores, prunable, keep_fraction, scorer.scope, units)
        if point.initial and dense_dir is not None:  # skipped dense: still initial
            model.load_state_dict(outputs.initial_state(dense_dir, initial))
        elif point.late:
            model.load_state_dict(rewind_state)
        if structure is None:
            M.apply_masks(model, masks)
        else:
            structure.remove(model)

        # 5. Masked fine-tune with a fresh optimiser; the epoch kept follows cfg.selection.
        t = time.perf_counter()
        pruned = fine_tune(
            model, data, cfg, cfg.epochs_final, out, "pruned",
            loggers=tracker.loggers("pruned"),
        )
        timings["pruned"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
        model.teacher = None

        # 6. The outputs contract; results.json last.
        final_masks = M.current_masks(model) if structure is None else masks  # original shapes
        results = outputs.collect_results(
            cfg, model, final_masks, own_budget, keep_fraction, dense, pruned, timings, cache, score_dir,
            strategy, scorer, key, at,
        )
        results["structure"] = structure.record() if structure is not None else None
        results["recipe"] = {"shots": shots, "shot_epochs": cfg.get("shot_epochs", 1) if shots > 1 else None,
                             "rounds": rounds, "distill": distill.record() if distill.enabled else None,
                             "rewind": point.spec()}
        # the cache entries this run's stages came from (their folder names): what runs share
        results["stage_keys"] = {stage: config_key({"stage": stage, **spec}) for stage, spec in
                                 {"dense": specs["dense"], "scores": specs["scores"], **lever_specs}.items()}
        outputs.write_run(out, results, final_masks, model, cfg, tokenizer)
        if cache.enabled:  # so a relaunched sweep (new Hydra folder) skips this finished job
            cache.get_or_build("runs", specs["run"], lambda d: outputs.store_run(d, out))
        tracker.finish(results, M.sparsity_rows(final_masks))
    return results
