"""DeepCuts entry point: ``python train.py [-m] data=stsb strategy=gradcam_shift ratio=3``."""

import logging
import sys

import hydra
from omegaconf import DictConfig

from deepcuts.errors import ConfigError

log = logging.getLogger("deepcuts")


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
    monitor = results["monitor"]
    dense = ("skipped (not needed)" if results.get("dense_skipped")
             else f"{monitor}={results['dense'].get(monitor, float('nan')):.4f}")
    structure = results.get("structure")
    removed = ("" if not structure else
               f" (heads kept per layer {structure['heads_kept']}, FFN widths {structure['neurons_kept']})")
    log.info(
        "%s %s ratio=%s seed=%s: dense %s, pruned %s=%.4f, achieved ratio %.3f%s",
        results["data"], results["strategy"], results["ratio"], results["seed"], dense,
        monitor, results["pruned"].get(monitor, float("nan")), results["achieved_ratio"], removed,
    )
    return results["pruned"].get(results["monitor"])


if __name__ == "__main__":
    main()
