"""Quiet third-party output: what libraries print that is not the user's to act on.

:func:`quiet_third_party` is called by ``train.py`` and at the start of every pipeline run; it is
idempotent. Each filter names one message (and where it comes from), so warnings about the
user's own config or data still show. What goes and why:

* Lightning's "💡 Tip: ... litlogger" advertisement, once per Trainer (several per job);
* "`Trainer.fit` stopped: `max_epochs=N` reached.", the expected end of every fine-tune (other
  reasons to stop, such as ``max_time``, still show);
* "GPU available: ...", "TPU available: ...", "HPU available: ...", "LOCAL_RANK: ...": kept,
  but once per process, not once per Trainer;
* the ``isinstance(treespec, LeafSpec)`` FutureWarning that torch raises inside Lightning;
* torchmetrics' note that ``SpearmanCorrcoef`` buffers all predictions (a GLUE dev set is small);
* the progress bars of ``datasets`` (tokenising, caching) when stderr is not a terminal: in a file
  they are written once, finished.

Lightning's "this fit will run with no optimizer" warning is silenced in
:func:`deepcuts.scoring.passes.run_scoring` only, around the scoring pass that has no optimiser.
"""

from __future__ import annotations

import logging
import sys
import warnings

LIGHTNING_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")
DROP = ("`Trainer.fit` stopped: `max_epochs=",)
ONCE = ("GPU available:", "TPU available:", "HPU available:", "LOCAL_RANK:")
WARNINGS = (  # (message regex, category, module regex): matched at the start of the message
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"pytorch_lightning\.utilities\._pytree"),
    (r"Metric `SpearmanCorrcoef` will save all targets and predictions in the buffer", UserWarning,
     r"torchmetrics\."),
)


class LightningNoise(logging.Filter):
    """Drops Lightning's per-Trainer advertisement and expected-end lines; the device lines pass
    once per process."""

    seen: set[str] = set()  # shared by the filters on both loggers: once per process

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg.startswith(DROP) or (msg.startswith("💡 Tip:") and "litlogger" in msg):
            return False
        if msg.startswith(ONCE):
            if msg in self.seen:
                return False
            self.seen.add(msg)
        return True


def quiet_third_party() -> None:
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, LightningNoise) for f in logger.filters):
            logger.addFilter(LightningNoise())
    for message, category, module in WARNINGS:
        # filterwarnings drops an identical earlier entry: calling this again adds nothing
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    stderr_isatty = getattr(sys.stderr, "isatty", None)
    if not (stderr_isatty and stderr_isatty()):
        try:
            from datasets.utils.logging import disable_progress_bar
        except ImportError:
            return
        disable_progress_bar()
