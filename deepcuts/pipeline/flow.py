"""The single-shot lottery-ticket flow, in order (docs/architecture.md walks it):

plan -> dense fine-tune -> [teacher, rewind point] -> scores -> [k-shot rounds] -> select ->
rewind -> apply (masks, or remove heads and neurons) -> masked fine-tune -> record.

Every check runs while the plan is built, before any training; each cached stage owns its key
(:mod:`deepcuts.pipeline.stages`) and goes through one runner (:class:`~deepcuts.pipeline.stage.StageRunner`).
"""

from __future__ import annotations

import logging
import time

from omegaconf import DictConfig

from deepcuts.pipeline import results as R
from deepcuts.pipeline.kshot import run_rounds
from deepcuts.pipeline.plan import RunPlan
from deepcuts.pipeline.stage import StageRunner
from deepcuts.pipeline.stages.dense import skipped
from deepcuts.pruning.masks import current_masks, sparsity_rows
from deepcuts.pruning.selectors import check_scores
from deepcuts.runtime.logs import quiet_third_party
from deepcuts.runtime.tracking import tracking
from deepcuts.training.distill import Teacher
from deepcuts.training.fine_tune import fine_tune

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    quiet_third_party()
    t0, out = time.perf_counter(), R.prepare_output_dir(cfg.output_dir)
    plan = RunPlan.build(cfg, out)  # every check that can fail on bad input fails here
    if (done := finished(plan)) is not None:
        return done
    stages = StageRunner(plan.cache, out)
    stages.time("setup", time.perf_counter() - t0)
    with tracking(cfg, out) as tracker, plan.cache:  # the cache entries used stay held until the end
        # 1. Dense fine-tune (shared by every strategy and ratio), unless nothing needs it.
        dense = stages.skip(plan.dense, skipped) if plan.skip_dense else stages(plan.dense, loggers=tracker.loggers)
        # 1b. What the levers take from it: the teacher's outputs, the weights at a late rewind point.
        teacher = Teacher(stages(plan.teacher, dense=dense), plan.distill) if plan.teacher else None
        rewound = stages(plan.rewind, dense=dense) if plan.rewind else None
        # 2. Scores (shared by every ratio, selector and control of one scoring strategy).
        scores = stages(plan.scores, dense=dense)
        check_scores(scores.tensors, plan.prunable)
        # 2b. k-shot: rounds 1..k-1 prune, fine-tune shortly and re-score among the kept weights.
        model = plan.template  # the run's own model from here on (stages that built copied it before)
        if dense.state is not None and (len(plan.schedule) > 1 or plan.point.kind == "finetuned"):
            model.load_state_dict(dense.state)
        final_scores, rounds = run_rounds(
            scores.tensors, plan.schedule, plan.selector, model,
            lambda m, t: fine_tune(m, plan.data, plan.fine_tune, plan.shot_epochs, out, f"shot{t}",
                                   loggers=tracker.loggers(f"shot{t}", use_wandb=False), teacher=teacher),
            lambda m, t: plan.scores.score(m, plan.scores.new_scorer(), t))
        # 3. Select (masks, or whole heads and neurons); 4. rewind (finetuned: keep the model as it
        #    is); then apply the selection to the rewound model.
        masks = plan.selector.select(final_scores, plan.keep_fraction, scores.units)
        masks = plan.transform(masks) if plan.transform is not None else masks
        if plan.point.kind != "finetuned":  # the initial state (pretrained, step:0, epoch:0) or a late point
            model.load_state_dict(rewound if rewound is not None else plan.initial)
        plan.selector.apply(model, masks)
        # 5. Masked fine-tune with a fresh optimiser; the epoch kept follows `selection`.
        t = time.perf_counter()
        pruned = fine_tune(model, plan.data, plan.fine_tune, plan.epochs_final, out, "pruned",
                           loggers=tracker.loggers("pruned"), teacher=teacher)
        stages.time("pruned", time.perf_counter() - t)
        stages.time("total", time.perf_counter() - t0)
        # 6. The outputs contract; results.json last.
        final = masks if plan.structured else current_masks(model)  # original shapes
        results = record(plan, model, final, dense.metrics, pruned, stages, scores.batches, rounds)
        R.write_run(out, results, final, model, cfg, plan.tokenizer)
        if plan.cache.enabled:  # so a relaunched sweep (new Hydra folder) skips this finished job
            plan.cache.get_or_build("runs", plan.run_spec, lambda d: R.store_run(d, out))
        tracker.finish(results, sparsity_rows(final))
    return results


def finished(plan: RunPlan) -> dict | None:
    """A finished job is never redone: the same folder, or the same run key elsewhere (``resume``)."""
    if not plan.cfg.resume:
        return None
    if R.is_complete(plan.out, plan.run_key, plan.cfg.save_model):
        log.info("%s already holds complete results: skipping (resume=false to redo)", plan.out)
        return R.read_results(plan.out)
    with plan.cache:  # held while it is copied
        if (done := plan.cache.lookup("runs", plan.run_spec)) is not None:
            log.info("identical job finished before (%s): copying its results", done)
            return R.restore_run(done, plan.out, plan.cfg)
    return None


def record(plan: RunPlan, model, masks, dense: dict, pruned: dict, stages: StageRunner, batches, rounds) -> dict:
    if rounds:
        stages.time("shots", sum(r["seconds"] for r in rounds))
    results = R.collect_results(plan, model, masks, dense, pruned, stages.timings, stages, batches)
    results["structure"] = plan.selector.record()
    results["recipe"] = {"shots": len(plan.schedule), "shot_epochs": plan.shot_epochs if len(plan.schedule) > 1 else None,
                         "rounds": rounds, "distill": plan.distill.record() if plan.distill.enabled else None,
                         "rewind": plan.point.spec()}
    return results
