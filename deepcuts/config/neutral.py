"""Config keys that never change a result, each with the reason, and the config keys the dense
fine-tune reads: the lists the stage cache's keys, the key-completeness test
(tests/test_cache_keys.py) and the reports (:mod:`deepcuts.analysis.runs`) share. A leaf not
neutral and read into no stage's key fails that test; so does a leaf that moves the dense key
without being listed in :data:`DENSE_INPUTS`, or one listed that does not."""

from __future__ import annotations

RESULT_NEUTRAL: dict[str, str] = {
    "progress": "how progress is shown (bar or log lines)",
    "logger": "where metrics are logged (CSV, W&B), not what is trained",
    "output_dir": "where this job writes its files",
    "cache": "whether stages are reused; a rebuilt stage gives the same bits",
    "cache_dir": "where the stage cache lives",
    "resume": "whether a finished job is skipped",
    "save_model": "whether the pruned model is also exported; in the run key only so that a job "
                  "asked to export is redone",
    "recipe_name": "a label for reports; the levers it names are keyed themselves",
    "data.root": "where the data files are; their sha256 is keyed (data_files)",
    "data.cache_dir": "where tokenised data is cached",
    "data.num_workers": "loader processes; batches are the same",
    "trainer.log_every_n_steps": "logging frequency",
    "trainer.enable_progress_bar": "display only",
    "trainer.enable_model_summary": "display only",
    "trainer.accelerator": "auto picks the device; the library versions and devices are keyed",
}


# Config keys (and prefixes) the dense stage's key reads: runs that differ in one of them come from
# different dense models by design, so a comparison across such a key cannot ask for one dense
# model per seed (deepcuts.analysis.compare).
DENSE_INPUTS = ("data", "model", "optimizer", "scheduler", "trainer", "seed", "epochs_dense",
                "selection", "selection_fraction", "scoring.trace_movement")


def _under(path: str, prefixes) -> bool:
    parts = path.split(".")
    return any(".".join(parts[:i]) in prefixes for i in range(1, len(parts) + 1))


def dense_input(path: str) -> bool:
    """Whether the dotted config ``path`` feeds the dense fine-tune (and is not result-neutral)."""
    return _under(path, DENSE_INPUTS) and not neutral(path)


def neutral(path: str) -> bool:
    """Whether the dotted config ``path`` (or a parent of it) is result-neutral."""
    return _under(path, RESULT_NEUTRAL)


def without_neutral(node: dict, prefix: str) -> dict:
    """``node`` (the plain config at ``prefix``) less its result-neutral keys."""
    return {k: v for k, v in node.items() if not neutral(f"{prefix}.{k}")}
