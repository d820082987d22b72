"""The recovery table's files (:mod:`deepcuts.analysis.recovery` computes it): ``recovery.md``, one
section per data with its seeds, machine and the commands that made the runs, the table, and the
paired differences in words ("no difference detected" when an interval covers 0), and
``recovery.csv``. Paths are printed relative to the output folder."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from deepcuts.analysis.keys import fmt
from deepcuts.analysis.recovery import DEFAULT_REFERENCE, LATE, load_runs, recovery_table
from deepcuts.analysis.runs import shown_path
from deepcuts.cache.files import atomic_path

__all__ = ["recovery_markdown", "write_recovery"]


def _num(value: Any, digits: int = 3, sign: bool = False) -> str:
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return f"{float(value):{'+' if sign else ''}.{digits}f}".replace("-", "−")


def _pct(value: Any, sign: bool = False) -> str:
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return f"{100 * float(value):{'+' if sign else ''}.1f}%".replace("-", "−")


def _interval(mean: str, low: Any, high: Any, fmt_one) -> str:
    if low is None or not math.isfinite(float(low)):
        return mean
    return f"{mean} [{fmt_one(low)}, {fmt_one(high)}]"


def _diff_cell(row: Mapping) -> str:
    verdict = str(row["verdict"])
    if verdict == "reference":
        return "reference"
    n = int(row["paired_n"])
    if n == 0:
        return "not paired"
    text = _interval(_num(row["diff_mean"], sign=True), row["diff_t_low"], row["diff_t_high"],
                     lambda v: _num(v, sign=True))
    text += f", {n} pair{'s' if n != 1 else ''}"
    if n < 2:
        return text + ": no interval"
    if row["covers_zero"] is None:  # every seed the same difference: zero variance, no interval
        return text + ": all seeds equal (no interval)"
    if row["covers_zero"]:
        return text + ": no difference detected"
    better = (row["diff_mean"] > 0) == bool(row["higher_is_better"])
    return text + f": {'better' if better else 'worse'}"


def _target_cell(row: Mapping) -> str:
    target = row["target"]
    if target is None or not math.isfinite(float(target)):
        return ""
    if not row["higher_is_better"]:
        return "n/a (lower is better)"
    if row["target_met"] is None:
        return "n/a"
    mean, low = _pct(row["pct_dense_mean"]), row["pct_dense_low"]
    if not row["target_met"]:
        return f"no ({mean} < {_pct(target)})"
    if low is None or not math.isfinite(float(low)):
        return f"yes ({mean}; no interval)"
    return f"yes; lower bound {_pct(low)} {'≥' if row['target_met_lower'] else '<'} {_pct(target)}"


def _seconds_cell(row: Mapping) -> str:
    if row["own_s_runs"] == row["seeds"]:
        return f"{row['own_s_mean']:.0f}"
    work = row["shots_s_mean"] + row["pruned_s_mean"]  # shots_s is 0 for a single shot
    return f"{work:.0f} + scoring n/a" if math.isfinite(work) else "n/a"


def _shared_cell(row: Mapping) -> str:
    if not row["needs_shared"]:
        return "—"
    parts = []
    if row["distill_alpha"]:
        parts.append(f"teacher {_num(row['teacher_s_mean'], 0)}")
    if str(row["rewind"]).startswith(LATE):
        parts.append(f"rewind {_num(row['rewind_s_mean'], 0)}")
    text = " + ".join(parts)
    if row["shared_s_seeds"] < row["seeds"]:
        text += f" (built here for {row['shared_s_seeds']} of {row['seeds']} seeds)"
    return text


def _machine(res: Mapping) -> str:
    m = res.get("machine")
    if not isinstance(m, Mapping):
        return "not recorded"
    cpu = f"{m.get('cpu_count', '?')} × {m.get('cpu_model') or m.get('processor') or 'CPU'}"
    return (f"{cpu}, device {m.get('device', '?')}, torch {m.get('torch', '?')}, "
            f"{m.get('torch_threads', '?')} torch thread(s)")


def _override(text: str) -> str:
    """A command-line override as a report shows it: an absolute path value (``cache_dir=/x/y``)
    keeps only its last part (``cache_dir=…/y``), so no machine's paths are printed."""
    key, sep, value = str(text).partition("=")
    if sep and os.path.isabs(value):
        return f"{key}=…/{Path(value).name}"
    return str(text)


def _sweep_command(run: Path) -> str | None:
    """The command that made a run: its sweep's ``multirun.yaml`` (``python train.py -m`` with the
    command line's overrides), else the run's own ``.hydra/overrides.yaml``."""
    try:
        sweep = run.parent / "multirun.yaml"
        if sweep.is_file():
            hydra = (yaml.safe_load(sweep.read_text()) or {}).get("hydra", {})
            task = hydra.get("overrides", {}).get("task", [])
            name = hydra.get("job", {}).get("name", "train")
            return " ".join([f"python {name}.py -m", *map(_override, task)])
        own = run / ".hydra" / "overrides.yaml"
        if own.is_file():
            return " ".join(["python train.py", *map(_override, yaml.safe_load(own.read_text()) or [])])
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return None


def _header(other: Sequence[str], metric: str, reference: str, target: float | None,
            mixed: Sequence[str]) -> tuple[str, str]:
    """The table's header and alignment rows (numbers right-aligned)."""
    cols = [*((k, "---") for k in mixed), ("model", "---"), ("ratio", "---:"),
            ("strategy", "---"), *((k, "---") for k in other), ("recipe", "---"),
            ("seeds", "---:"), ("masked epochs", "---:"), (f"{metric} (95% CI)", "---:"),
            ("dense", "---:"), ("% of dense (95% CI)", "---:"),
            (f"Δ {metric} vs {reference} (95% CI, pairs)", "---")]
    if target is not None:
        cols.append((f"target ≥ {_pct(target)}", "---"))
    cols += [("own s/job", "---:"), ("shared builds s/seed", "---")]
    return ("| " + " | ".join(c for c, _ in cols) + " |",
            "|" + "|".join(a for _, a in cols) + "|")


def recovery_markdown(table: pd.DataFrame, runs: pd.DataFrame, *, folders: Sequence[Path] = (),
                      skipped: Mapping[Path, str] | None = None, command: str | None = None,
                      targets: Mapping[str, float] | None = None, out: Path | None = None) -> str:
    """The table as Markdown: a section per data with its seeds, machine and sweep command, the
    rows, the paired verdicts in words, then the folders skipped; paths relative to ``out``
    (default: the working folder)."""
    base = Path(out) if out is not None else Path.cwd()
    reference = table.attrs.get("reference", DEFAULT_REFERENCE)
    other = list(table.attrs.get("other_keys", []))
    targets = dict(targets or {})
    lines = ["# Recovery at high sparsity: recipes against the single shot", ""]
    if command:
        shown = " ".join(shown_path(t, base) if os.path.isabs(t) else _override(t)
                         for t in command.split())
        lines += [f"Made by `{shown}`.", ""]
    where = ", ".join(f"`{shown_path(f, base)}`" for f in folders)
    replaced = runs.attrs.get("replaced", 0)
    lines += [
        f"{len(runs)} complete run(s){' under ' + where if where else ''}"
        + (f" ({replaced} older rerun(s) replaced by the newer)" if replaced else "") + ".",
        "",
        f"How to read it: the pruned dev metric (the task's monitor, at the epoch the run kept) "
        f"over seeds, mean and 95% Student-t interval; `% of dense` is the mean over seeds of "
        f"pruned / dense (same seed, same dense model); `Δ` is the paired difference to "
        f"`{reference}` of the same data, model, ratio, strategy and seed, over the seeds both "
        f"have and that came from the same dense model (95% t-interval; \"no difference detected\" when the t or the bootstrap interval "
        f"covers 0: neither recipe wins; \"all seeds equal\" when every seed gives the same "
        f"difference: no interval). `own s/job`: k-shot rounds + masked fine-tune + scoring "
        f"(as built), mean seconds per job; `shared builds s/seed`: the one-off stages a recipe "
        f"adds per dense model (teacher outputs, rewind replay), counted only from a run that "
        f"built them (results.json `cache.builds`). The dense fine-tune, the same for every "
        f"recipe, is left out.",
        "",
    ]
    if not table.attrs.get("reference_plain", True):
        lines += [f"Note: the reference `{reference}` is not a single shot without distillation "
                  "(its runs have shots > 1 or distill.alpha > 0).", ""]
    unmet = [d for d in targets if d not in set(table["data"].astype(str))]
    if unmet:
        lines += [f"No run of {', '.join(unmet)}: target(s) not evaluated.", ""]
    for data, part in table.groupby("data", sort=True):
        data_runs = runs[runs["data"].astype(str) == str(data)]
        metric = ", ".join(sorted(part["metric"].astype(str).unique()))
        target = targets.get(str(data))
        title = f"## {data}: monitor `{metric}`"
        if target is not None:
            title += f", target {_pct(target)} of dense"
        lines += [title, ""]
        seeds = sorted({int(s) for s in data_runs["seed"]})
        lines.append(f"- Seeds: {', '.join(map(str, seeds))} ({len(seeds)}); the `seeds` "
                     f"column gives each row's count.")
        machines = sorted({_machine(r) for r in data_runs["results"]})
        lines.append("- Machine: " + "; ".join(machines) + ".")
        commands: dict[str, int] = {}
        for path in data_runs["path"]:
            cmd = _sweep_command(Path(path)) or "not recorded"
            commands[cmd] = commands.get(cmd, 0) + 1
        for cmd, n in sorted(commands.items()):
            lines.append(f"- Runs made by `{cmd}` ({n} run(s)).")
        sweeps = sorted({shown_path(Path(p).parent, base) for p in data_runs["path"]})
        lines.append("- Run folders under: " + ", ".join(f"`{s}`" for s in sweeps) + ".")
        lines.append("")
        mixed = [k for k in ("ratio_basis", "selection") if part[k].astype(str).nunique() > 1]
        head, rule = _header(other, metric, reference, target, mixed)
        lines += [head, rule]
        for row in part.to_dict("records"):
            cells = [*(fmt(row[k]) for k in mixed), fmt(row["model"]), fmt(row["ratio"]),
                     fmt(row["strategy"]), *(fmt(row[k]) for k in other), str(row["recipe"])]
            seeds_text = str(row["seeds"]) + (f" ({row['seeds_nan']} NaN)" if row["seeds_nan"] else "")
            cells += [seeds_text, fmt(row["masked_epochs"]),
                      _interval(_num(row["pruned_mean"]), row["pruned_low"], row["pruned_high"], _num),
                      _num(row["dense_mean"]),
                      _interval(_pct(row["pct_dense_mean"]), row["pct_dense_low"],
                                row["pct_dense_high"], _pct),
                      _diff_cell(row)]
            if target is not None:
                cells.append(_target_cell(row))
            cells += [_seconds_cell(row), _shared_cell(row)]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Paired against `{reference}`, in words:", ""]
        for row in part.to_dict("records"):
            if row["verdict"] == "reference":
                continue
            what = ", ".join(x for x in (fmt(row["model"]), f"ratio {fmt(row['ratio'])}",
                                         fmt(row["strategy"]),
                                         *(f"{k}={fmt(row[k])}" for k in other)) if x)
            lines.append(f"- {what}, `{row['recipe']}`: {row['verdict']}.")
        lines.append("")
    if skipped:
        lines += ["## Skipped run folders", ""]
        lines += [f"- `{shown_path(path, base)}`: {why}"
                  for path, why in sorted(skipped.items(), key=lambda kv: str(kv[0]))]
        lines.append("")
    return "\n".join(lines)


def write_recovery(folders: Iterable[str | os.PathLike], out: str | os.PathLike,
                   reference: str = DEFAULT_REFERENCE,
                   targets: Mapping[str, float] | None = None, command: str | None = None,
                   echo: bool = True) -> dict[str, Any]:
    """Write ``recovery.md`` and ``recovery.csv`` under ``out`` (each atomically; nothing when a
    :class:`deepcuts.analysis.recovery.RecoveryError` is raised), print the Markdown (``echo``)
    and return ``{"markdown", "csv": Path, "table", "runs": DataFrame, "skipped": {Path: why},
    "text": str}``."""
    folders = [Path(f) for f in folders]
    out = Path(out)
    runs, skipped = load_runs(folders)
    table = recovery_table(runs, reference, targets)
    text = recovery_markdown(table, runs, folders=folders, skipped=skipped, command=command,
                             targets=targets, out=out)
    out.mkdir(parents=True, exist_ok=True)
    csv = table.drop(columns=["needs_shared"]).to_csv(index=False)
    for name, content in (("recovery.csv", csv), ("recovery.md", text)):
        with atomic_path(out / name) as tmp:  # never half a file
            tmp.write_text(content, encoding="utf-8")
    if echo:
        print(text, end="", flush=True)
    return {"markdown": out / "recovery.md", "csv": out / "recovery.csv", "table": table,
            "runs": runs, "skipped": skipped, "text": text}
