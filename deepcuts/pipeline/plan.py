"""The run plan: every setting read, checked and turned into objects before any training.

:meth:`RunPlan.build` is the only code that reads the composed config for a run's results; it
fails on bad input with a :class:`~deepcuts.config.errors.ConfigError` that says what to change,
and gives the model, the data, the scoring strategy, the selector, the keep fraction, the stages
(each keyed by its own fields) and the run key. Nothing is trained or cached while planning.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from deepcuts.cache import keys as K
from deepcuts.cache.code import code_digest
from deepcuts.cache.store import StageCache, config_key
from deepcuts.config.errors import ConfigError
from deepcuts.config.neutral import without_neutral
from deepcuts.data.glue import GlueDataModule
from deepcuts.data.tsv import resolve_root
from deepcuts.models.module import GlueModel, build_model, load_tokenizer
from deepcuts.pipeline.stages.dense import DenseStage
from deepcuts.pipeline.stages.levers import RewindStage, TeacherStage
from deepcuts.pipeline.stages.scores import ScoresStage
from deepcuts.pruning import budget as B
from deepcuts.pruning.schedule import check_shots, keep_schedule
from deepcuts.pruning.selectors import HeadsNeuronsSelector, Selector, make_selector
from deepcuts.runtime.progress import progress_settings
from deepcuts.scoring.passes import scoring_batches, scoring_state
from deepcuts.training.distill import DistillSettings
from deepcuts.training.fine_tune import FineTuneSettings
from deepcuts.training.rewind import RewindPoint, steps_per_epoch

STRATEGY_DIR = Path(__file__).resolve().parents[2] / "conf" / "strategy"
CONTROL_KEYS = ("_target_", "name", "of", "scope", "seed")  # a control's own keys; the rest override `of`


def instantiate_checked(node: DictConfig):
    """``instantiate``, re-raising our own ConfigError unwrapped so its message reaches the user."""
    try:
        return instantiate(node)
    except InstantiationException as err:
        if isinstance(err.__cause__, ConfigError):
            raise err.__cause__ from None
        raise


def scoring_strategy_cfg(cfg: DictConfig, strategy) -> DictConfig:
    """The strategy config that computes the scores: the run's own, or for a control of another
    strategy (``strategy.of``) that strategy's YAML with the control's other keys over it (the
    compared run's settings, e.g. a swept ``sigma``)."""
    if strategy.of is None:
        return cfg.strategy
    path = STRATEGY_DIR / f"{strategy.of}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in STRATEGY_DIR.glob("*.yaml")))
        raise ConfigError(f"strategy.of={strategy.of!r} names no strategy; use one of: {names}.")
    other = copy.deepcopy(cfg)  # the YAML's interpolations (${seed}, ${scoring.accumulate}) resolve in the run
    with open_dict(other):
        other.strategy = OmegaConf.merge(OmegaConf.load(path), {k: v for k, v in cfg.strategy.items() if k not in CONTROL_KEYS})
    return other.strategy


def resolve_keep_fraction(cfg: DictConfig, own_budget: B.Budget) -> float:
    """``keep_fraction`` when given (it overrides the ratio), else from ``ratio``/``ratio_basis``."""
    if cfg.get("keep_fraction") is not None:
        f = cfg.keep_fraction
        if not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise ConfigError(f"keep_fraction must be a number in (0, 1], got {f!r}.")
        return float(f)
    return B.budget_for(cfg.ratio_basis, own_budget).keep_fraction(cfg.ratio)


def teacher_device(trainer: dict) -> str:
    """Where the teacher's one pass over the train set runs: the fine-tunes' GPU when there is one."""
    wants_gpu = str(trainer.get("accelerator", "auto")) in ("gpu", "cuda", "auto")
    return "cuda" if wants_gpu and torch.cuda.is_available() else "cpu"


@dataclasses.dataclass
class RunPlan:
    cfg: DictConfig  # for config.yaml, labels in results.json and the tracker only
    out: Path
    tokenizer: object
    template: GlueModel  # the model at its initial state: stages copy it (new_model); the flow then trains it
    initial: dict[str, torch.Tensor]
    data: GlueDataModule
    strategy: object  # the run's strategy (a control's transform comes from it)
    scorer: object  # the strategy that computes the scores
    transform: object | None  # a mask transform (strategy=shuffled), or None
    selector: Selector
    prunable: dict[str, tuple[int, ...]]  # name -> shape
    budget: B.Budget
    keep_fraction: float
    schedule: list[float]  # kept fraction after each k-shot round; [keep_fraction] for a single shot
    shot_epochs: int
    point: RewindPoint
    distill: DistillSettings
    fine_tune: FineTuneSettings
    epochs_final: int
    at: str
    skip_dense: bool  # nothing needs the dense model: no scores of it, no rewind into it, no teacher
    dense: DenseStage
    scores: ScoresStage
    teacher: TeacherStage | None
    rewind: RewindStage | None
    run_spec: dict
    cache: StageCache

    @property
    def run_key(self) -> str:
        return config_key(self.run_spec)

    @property
    def structured(self) -> bool:
        """Whole heads and neurons are removed (structure=heads_neurons), not masked."""
        return isinstance(self.selector, HeadsNeuronsSelector)

    def new_model(self) -> GlueModel:
        """A fresh copy of the model at its initial state (the rewind target)."""
        return copy.deepcopy(self.template)

    def stage_keys(self) -> dict[str, str]:
        stages = {"dense": self.dense, "scores": self.scores, "teacher": self.teacher, "rewind": self.rewind}
        return {name: stage.key() for name, stage in stages.items() if stage is not None}

    @classmethod
    def build(cls, cfg: DictConfig, out: Path) -> RunPlan:
        """Read and check every setting; build the model and data (tokenised, cached) but train nothing."""
        point = RewindPoint.parse(cfg.rewind)
        distill = DistillSettings.from_cfg(cfg.get("distill"))
        fine_tune = FineTuneSettings.from_cfg(cfg)
        progress_settings(cfg.get("progress"))
        strategy = instantiate_checked(cfg.strategy)
        scorer_cfg = scoring_strategy_cfg(cfg, strategy)
        scorer = strategy if scorer_cfg is cfg.strategy else instantiate_checked(scorer_cfg)
        trace_movement = bool(cfg.scoring.get("trace_movement", True))
        if scorer.from_dense and not trace_movement:
            raise ConfigError(f"strategy {scorer.name!r} reads the movement trace of the dense fine-tune: set scoring.trace_movement=true.")
        if scorer.from_dense and cfg.epochs_dense < 1:
            raise ConfigError(f"strategy {scorer.name!r} is traced during the dense fine-tune: it needs epochs_dense >= 1, got {cfg.epochs_dense}.")
        if scorer.of is not None:
            raise ConfigError(f"strategy.of={strategy.of!r} is itself a control of another strategy; name a scoring strategy.")
        if cfg.get("save_model") not in (None, False, True, "onnx"):
            raise ConfigError(f"save_model={cfg.save_model!r}: false, true (a transformers folder) or onnx (that folder "
                              "and its ONNX graph, checked with ONNX Runtime).")
        if cfg.scoring.batches is not None and int(cfg.scoring.batches) <= 0:
            raise ConfigError(f"scoring.batches must be >= 1 (or null for the default), got {cfg.scoring.batches}.")
        tokenizer = load_tokenizer(cfg.model.tokenizer)
        template = build_model(cfg, tokenizer)
        prunable = B.prunable_parameters(template, cfg.prune.include, cfg.prune.get("exclude", []))
        traced = list(B.prunable_parameters(template, list(cfg.model.prunable), [])) if trace_movement else None
        own_budget = B.model_budget(template, prunable)
        keep_fraction = resolve_keep_fraction(cfg, own_budget)
        transform = strategy.mask_transform()
        selector = make_selector(cfg.get("structure"), template, scorer, transform, prunable, keep_fraction)
        initial = {k: v.detach().clone() for k, v in template.state_dict().items()}  # a copy, not a view
        holdout = fine_tune.selection_fraction
        data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
        data = GlueDataModule(tokenizer, **data_cfg, seed=cfg.seed, holdout_fraction=holdout)
        data.setup()
        template.set_eval_sets(data.eval_sets())  # the dev set, the holdout slice, extra dev sets
        loader = data.scoring_dataloader(cfg.seed) if scorer.needs_data else None
        n_batches = scoring_batches(scorer, cfg.scoring.batches, loader)
        at = scoring_state(cfg.scoring.get("at"), scorer)
        shots = check_shots(cfg, strategy, scorer, isinstance(selector, HeadsNeuronsSelector), at)
        point.check(cfg.epochs_dense, steps_per_epoch(len(data.train_dataloader()),
                                                      fine_tune.trainer.get("accumulate_grad_batches", 1)))
        if point.late and (fine_tune.trainer.get("limit_train_batches") is not None
                           or fine_tune.trainer.get("max_steps", -1) != -1
                           or fine_tune.trainer.get("fast_dev_run") not in (None, False, 0)
                           or fine_tune.trainer.get("overfit_batches") not in (None, 0, 0.0)
                           or str(fine_tune.trainer.get("devices", 1)) not in ("1", "auto")):
            raise ConfigError(f"rewind={point.spec()} replays the dense fine-tune on one device with whole epochs; "
                              "it does not support trainer.devices > 1, limit_train_batches, max_steps, "
                              "fast_dev_run or overfit_batches (debug=fdr|limit|overfit: use rewind=pretrained or "
                              "finetuned).")
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        seeded = {k: v for k, v in initial.items() if not model_cfg.get("pretrained") or k.startswith("head.")}
        new_model = lambda: copy.deepcopy(template)  # noqa: E731
        folder = resolve_root(data_cfg.get("root")) / data_cfg["folder"]
        dense = DenseStage(
            data=without_neutral(data_cfg, "data"),
            data_files=K.files_sha256(folder, [data_cfg["train_file"], data_cfg["eval_file"],
                                             *(data_cfg.get("extra_eval_files") or {}).values()]),
            model=model_cfg, initial_state=K.state_digest(initial),
            optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
            scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True) if cfg.get("scheduler") else None,
            fine_tune=fine_tune, epochs=int(cfg.epochs_dense), trace=traced, libraries=K.library_versions(),
            new_model=new_model, datamodule=data, seeded=seeded, out=out,
        )
        dense_key = dense.key()
        quiet = {"accelerator": fine_tune.trainer.get("accelerator", "auto"), "devices": 1,
                 "enable_progress_bar": fine_tune.trainer.get("enable_progress_bar", True)}
        scoring = OmegaConf.to_container(cfg.scoring, resolve=True)
        scores = ScoresStage(
            dense=dense_key,
            strategy={k: v for k, v in OmegaConf.to_container(scorer_cfg, resolve=True).items() if k not in ("name", "scope")},
            scoring={k: scoring[k] for k in ("dropout", "accumulate") if k in scoring} if n_batches else None,
            batches=n_batches, at=at, prunable={n: list(p.shape) for n, p in prunable.items()}, seed=int(cfg.seed),
            scorer=scorer, new_scorer=lambda: instantiate_checked(scorer_cfg), new_model=new_model, pretrained=initial, datamodule=data, trainer=quiet,
            progress=fine_tune.progress, asked=cfg.scoring.batches, from_dense=scorer.from_dense,
        )
        teacher = TeacherStage(dense=dense_key, new_model=new_model, datamodule=data,
                               device=teacher_device(fine_tune.trainer)) if distill.enabled else None
        rewind = RewindStage(dense=dense_key, point=point, epochs=int(cfg.epochs_dense), fine_tune=fine_tune,
                             new_model=new_model, datamodule=data, pretrained=initial) if point.late else None
        structure = OmegaConf.to_container(cfg.structure, resolve=True) if cfg.get("structure") is not None else None
        run_spec = {
            "stages": {s.name: s.key() for s in (dense, scores, teacher, rewind) if s is not None},
            "strategy": OmegaConf.to_container(cfg.strategy, resolve=True),
            **{k: cfg.get(k) for k in ("ratio", "ratio_basis", "keep_fraction", "epochs_final", "save_model")},
            "rewind": point.spec(), "kept": keep_fraction, "prunable": list(prunable),
            "scope": scorer.scope,  # the selection's scope: the scoring strategy's (a control's is not used)
            "structure": structure if isinstance(selector, HeadsNeuronsSelector) else None,
            "shots": shots, "shot_epochs": cfg.get("shot_epochs", 1) if shots > 1 else None,
            "distill": distill.record() if distill.enabled else None,
            "code": code_digest("deepcuts.pipeline.flow", type(strategy)),
        }
        return cls(
            cfg=cfg, out=out, tokenizer=tokenizer, template=template, initial=initial, data=data,
            strategy=strategy, scorer=scorer, transform=transform, selector=selector,
            prunable={n: tuple(p.shape) for n, p in prunable.items()}, budget=own_budget, keep_fraction=keep_fraction,
            schedule=keep_schedule(keep_fraction, shots), shot_epochs=int(cfg.get("shot_epochs", 1)),
            point=point, distill=distill, fine_tune=fine_tune, epochs_final=int(cfg.epochs_final), at=at,
            skip_dense=at == "pretrained" and point.initial and not distill.enabled,
            dense=dense, scores=scores, teacher=teacher, rewind=rewind, run_spec=run_spec,
            cache=StageCache(cfg.cache_dir, enabled=cfg.cache),
        )
