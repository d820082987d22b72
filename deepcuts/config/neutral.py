"""Config keys that never change a result, each with the reason: the one list the cache keys
and the key-completeness test use (tests/test_key_completeness.py). Anything not here and not
read into some stage's key fails that test."""

from __future__ import annotations

RESULT_NEUTRAL: dict[str, str] = {
    "progress": "how progress is shown (bar or log lines)",
    "logger": "where metrics are logged (CSV, W&B), not what is trained",
    "output_dir": "where this job writes its files",
    "cache": "whether stages are reused; a rebuilt stage gives the same bits",
    "cache_dir": "where the stage cache lives",
    "resume": "whether a finished job is skipped",
    "recipe_name": "a label for reports; the levers it names are keyed themselves",
    "data.root": "where the data files are; their sha256 is keyed (data_files)",
    "data.cache_dir": "where tokenised data is cached",
    "data.num_workers": "loader processes; batches are the same",
    "trainer.log_every_n_steps": "logging frequency",
    "trainer.enable_progress_bar": "display only",
    "trainer.enable_model_summary": "display only",
    "trainer.accelerator": "auto picks the device; the library versions and devices are keyed",
}


def neutral(path: str) -> bool:
    """Whether the dotted config ``path`` (or a parent of it) is result-neutral."""
    parts = path.split(".")
    return any(".".join(parts[:i]) in RESULT_NEUTRAL for i in range(1, len(parts) + 1))


def without_neutral(node: dict, prefix: str) -> dict:
    """``node`` (the plain config at ``prefix``) less its result-neutral keys."""
    return {k: v for k, v in node.items() if not neutral(f"{prefix}.{k}")}
