"""DeepCuts entry point: ``python train.py [-m] data=stsb strategy=gradcam_shift ratio=3``."""

import logging
import sys

import hydra
from omegaconf import DictConfig

from deepcuts.errors import ConfigError

log = logging.getLogger("deepcuts")


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
    return (f"{r['data']} {r['strategy']} seed={r['seed']}: {asked} -> {reached}; {dense}, "
            f"pruned {monitor}={r['pruned'].get(monitor, float('nan')):.4f}")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from deepcuts.logs import quiet_third_party

    quiet_third_party()  # before the heavy imports: what they warn about is not the user's to fix
    from deepcuts.pipeline import run

    try:
        results = run(cfg)
    except ConfigError as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    log.info("%s", summary_line(results, cfg.get("keep_fraction") is not None))
    return results["pruned"].get(results["monitor"])


if __name__ == "__main__":
    main()
