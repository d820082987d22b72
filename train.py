"""DeepCuts entry point: ``python train.py [-m] data=stsb strategy=gradcam_shift ratio=3``."""

import logging
import math
import sys

import hydra
from omegaconf import DictConfig

from deepcuts.config.errors import ConfigError

log = logging.getLogger("deepcuts")
# Sweepers that optimise the value a job returns (the others, e.g. Hydra's basic sweeper, ignore it)
OPTIMISING_SWEEPERS = ("optuna", "nevergrad", "hydra_ax_sweeper")


def summary_line(results: dict, keep_fraction_given: bool = False) -> str:
    """A job's last line: what was asked and what was reached, then the metrics, e.g. ``stsb
    gradcam_shift seed=0: ratio 3 on the bert_base basis (keep 14.7% of prunable weights) ->
    achieved 1.68 on this model (22.7M -> 13.5M non-zero); dense pearson=0.7840, pruned
    pearson=0.7602``."""
    r, monitor = results, results["monitor"]
    kept = f"keep {100 * r['keep_fraction']:.1f}% of prunable weights"
    if keep_fraction_given:
        asked = f"keep_fraction {r['keep_fraction']:g} ({kept.removeprefix('keep ')})"
    else:
        basis = "the model's own counts" if r["ratio_basis"] == "model" else f"the {r['ratio_basis']} basis"
        asked = f"ratio {r['ratio']:g} on {basis} ({kept})"
    reached = (f"achieved {r['achieved_ratio']:.2f} on this model ({r['total_parameters'] / 1e6:.1f}M -> "
               f"{r['nonzero_parameters'] / 1e6:.1f}M non-zero)")
    if structure := r.get("structure"):
        reached += f", heads kept per layer {structure['heads_kept']}, FFN widths {structure['neurons_kept']}"
    dense = ("dense skipped (not needed)" if r.get("dense_skipped")
             else f"dense {monitor}={r['dense'].get(monitor, float('nan')):.4f}")
    levers = recipe_words(r.get("recipe"))
    return (f"{r['data']} {r['strategy']} seed={r['seed']}{levers}: {asked} -> {reached}; {dense}, "
            f"pruned {monitor}={r['pruned'].get(monitor, float('nan')):.4f}")


def recipe_words(recipe: dict | None) -> str:
    """The recovery levers a run used, e.g. `` (shots=3, distill alpha=0.5 T=2, rewind=epoch:1)``."""
    if not recipe:
        return ""
    words = []
    if recipe.get("shots", 1) > 1:
        words.append(f"shots={recipe['shots']}")
    if d := recipe.get("distill"):
        words.append(f"distill alpha={d['alpha']:g} T={d['temperature']:g}")
    if str(recipe.get("rewind", "")).startswith(("step:", "epoch:")):
        words.append(f"rewind={recipe['rewind']}")
    return f" ({', '.join(words)})" if words else ""


def optimising_sweeper() -> str | None:
    """The ``_target_`` of this multirun's sweeper when it optimises the returned value (Optuna,
    Nevergrad, Ax); None for a single run or a sweeper that ignores it (Hydra's basic one)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    target = str(hydra_cfg.sweeper.get("_target_", ""))
    if hydra_cfg.mode != RunMode.MULTIRUN or not any(n in target.lower() for n in OPTIMISING_SWEEPERS):
        return None
    return target


def check_search(cfg: DictConfig) -> None:
    """A search optimises the held-out slice of train, never the dev set it reports: fail before any
    training when an optimising sweeper runs jobs that hold nothing out."""
    sweeper = optimising_sweeper()
    if sweeper is not None and cfg.selection != "holdout":
        raise ConfigError(
            f"the sweeper {sweeper.rsplit('.', 1)[-1]} optimises the value each job returns: the pruned "
            f"model's {cfg.data.monitor} on the held-out slice of train (selection=holdout). With "
            f"selection={cfg.selection} nothing is held out, and optimising the dev metric would select "
            "on the set that is reported. Set selection=holdout (the conf/hparams_search configs do)."
        )


def objective(results: dict, mode: str = "max") -> float | None:
    """What a hyper-parameter search optimises: the pruned model's monitored metric on the held-out
    slice of train (``selection=holdout``) at the epoch the masked fine-tune kept (``best_epoch``;
    the last epoch when none was selected). Never the dev metric.

    None when the run held nothing out (``selection`` last or dev). A NaN metric (a collapsed
    regression model predicts a constant: no correlation) becomes the worst value, -inf for
    ``mode="max"`` and +inf for ``"min"``: Optuna records that as a complete, bad trial, whereas a
    NaN return makes hydra-optuna-sweeper 1.3.0 abort the whole search (docs/search.md).
    """
    history = (results.get("history") or {}).get("pruned") or []
    if results.get("selection") != "holdout" or not history:
        return None
    best = results.get("best_epoch")
    kept = history[-1] if best is None else next((h for h in history if h.get("epoch") == best), None)
    if kept is None:
        raise ValueError(f"results: best_epoch {best} is not in the pruned history (epochs "
                         f"{[h.get('epoch') for h in history]}).")
    value = float((kept.get("holdout") or {}).get(results["monitor"], math.nan))
    if math.isnan(value):
        return -math.inf if mode == "max" else math.inf
    return value


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Runs one job; returns :func:`objective` (what an Optuna search optimises: the held-out slice
    of train under ``selection=holdout``, None otherwise), never the reported dev metric."""
    from deepcuts.runtime.logs import quiet_third_party

    quiet_third_party()  # before the heavy imports: what they warn about is not the user's to fix
    from deepcuts.pipeline.flow import run

    try:
        check_search(cfg)
        results = run(cfg)  # a finished job (resume) returns the results it read
    except ConfigError as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info("%s", summary_line(results, cfg.get("keep_fraction") is not None))
    value = objective(results, cfg.data.get("monitor_mode", "max"))
    if value is not None:
        epoch = results.get("best_epoch")
        log.info("objective: holdout %s = %r (pruned, %s)", results["monitor"], value,
                 f"epoch {epoch}" if epoch is not None else "last epoch")
    return value


if __name__ == "__main__":
    main()
