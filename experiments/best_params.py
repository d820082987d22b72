"""The command that re-runs an Optuna search's best settings on the reporting seeds.

    python experiments/best_params.py SWEEP_DIR [--seeds 0,1,2] [--selection holdout|last]

SWEEP_DIR is the folder of a finished search (``python train.py -m hparams_search=...``): its
``optimization_results.yaml`` names the best parameters, its trials' ``.hydra`` folders the rest of
the configuration. The command (stdout; notes go to stderr) rebuilds that configuration without the
search: the config groups and command-line overrides the trials ran with, the values the
``hparams_search`` config set, the best parameters, then the reporting seeds and the selection
rule. It is checked before printing: composed with the repository's config for the first seed, it
gives the best trial's config exactly (but for ``seed`` and ``selection``).

The search optimised the held-out slice of train (seed 100); the re-run reports dev on fresh seeds.
``--selection holdout`` (default) re-runs the procedure the search tuned (10% of train held out to
choose the epoch); ``--selection last`` trains on all of train and keeps the last epoch, as the
study's runs do: use it to compare with results reported under ``selection=last``. Either way,
every method in one comparison must share the rule. docs/search.md.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
RESULTS = "optimization_results.yaml"
SEARCH_GROUP = "hparams_search"
RERUN_KEYS = ("seed", "selection")  # what the re-run sets itself
SELECTIONS = ("holdout", "last")  # never dev: that would select on the reported set
PLAIN = re.compile(r"^[A-Za-z_][\w.\-/:]*$")  # strings Hydra reads back unquoted as the same string
NUMBER_LIKE = re.compile(r"^[+-]?(\d|\.\d|inf|nan)", re.IGNORECASE)
KEYWORDS = {"true", "false", "null", "inf", "nan"}


class SearchError(Exception):
    """A sweep folder that cannot give a re-run command; the message says why."""


def format_value(value: Any) -> str:
    """``value`` in Hydra's override grammar, so that Hydra parses it back to the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if PLAIN.match(text) and text.lower() not in KEYWORDS and not NUMBER_LIKE.match(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """A plain config as ``{dotted key: value}``; an empty dict or list is a leaf."""
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(leaves(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def diff_overrides(target: dict, composed: dict, skip: tuple[str, ...]) -> list[str]:
    """Overrides that turn ``composed`` into ``target`` (plain, unresolved configs): ``key=value``
    for a changed value, ``+key=value`` for a key only the target has, ``~key`` for one it lacks."""
    want, have = leaves(target), leaves(composed)

    def skipped(key: str) -> bool:
        return any(key == s or key.startswith(s + ".") for s in skip)

    out = []
    for key, value in want.items():
        if skipped(key):
            continue
        if key not in have:
            out.append(f"+{key}={format_value(value)}")
        elif have[key] != value or type(have[key]) is not type(value):
            out.append(f"{key}={format_value(value)}")
    out += [f"~{key}" for key in have if key not in want and not skipped(key)]
    return out


def compose(overrides: list[str], hydra_choices: bool = False) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("train", overrides=overrides, return_hydra_config=hydra_choices)


def read_best(sweep: Path) -> tuple[dict, float]:
    path = sweep / RESULTS
    if not sweep.is_dir():
        raise SearchError(f"{sweep} is not a folder: give the sweep folder of a finished search "
                          f"(hydra.sweep.dir; the search configs use multirun/search/<name>/<time>).")
    if not path.is_file():
        done = sorted(p.parent.name for p in sweep.glob("*/results.json"))
        raise SearchError(
            f"{sweep} has no {RESULTS}. The Optuna sweeper writes it after its last trial, so the "
            f"search did not finish (or this is not an Optuna sweep: python train.py -m "
            f"hparams_search=<name>). Finished trials here: {len(done)}"
            + (f" ({', '.join(done[:5])}{', ...' if len(done) > 5 else ''})." if done else ".")
            + " A killed search resumes only if it ran with hydra.sweeper.storage=sqlite:///<file> "
            "and hydra.sweeper.study_name=<name>: relaunch the same command (docs/search.md)."
        )
    results = OmegaConf.to_container(OmegaConf.load(path))
    if "best_params" not in results:
        raise SearchError(f"{path} holds no best_params (a multi-objective search gives a Pareto "
                          "front, 'solutions'): pick one of its solutions by hand.")
    return dict(results["best_params"]), results.get("best_value")


def trial_dirs(sweep: Path) -> list[Path]:
    trials = [p.parent.parent for p in sweep.glob("*/.hydra/hydra.yaml") if (p.parent / "config.yaml").is_file()]
    if not trials:
        raise SearchError(f"{sweep} has {RESULTS} but no trial folder with .hydra/hydra.yaml and "
                          ".hydra/config.yaml: the trials' configuration is needed to re-run them.")
    return sorted(trials, key=lambda p: (len(p.name), p.name))


def search_key(override: str) -> str:
    """The key an override sets: ``+a.b=1`` -> ``a.b``, ``~a`` -> ``a``."""
    return override.split("=", 1)[0].lstrip("+~")


def rerun_overrides(sweep: Path, seeds: list[int], selection: str) -> tuple[list[str], dict]:
    """The override list for ``train.py -m`` and what the notes need (best value, trial, seed)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    best, best_value = read_best(sweep)
    best_overrides = [f"{k}={v}" for k, v in best.items()]  # exactly as the sweeper passes them
    trials = trial_dirs(sweep)
    best_trial = next((t for t in trials
                       if set(best_overrides) <= set(OmegaConf.load(t / ".hydra/overrides.yaml"))), None)
    trial = best_trial or trials[0]  # a resumed study's best trial may be in an earlier folder
    hydra_cfg = OmegaConf.load(trial / ".hydra/hydra.yaml").hydra
    target = OmegaConf.load(trial / ".hydra/config.yaml")
    if best_trial is None:  # put the best values into another trial's config (same base)
        for override in OverridesParser.create().parse_overrides(best_overrides):
            OmegaConf.update(target, override.get_key_element(), override.value(), force_add=True)
    search_seed = target.get("seed")
    if search_seed in seeds:
        raise SearchError(f"seed {search_seed} is the search's own seed: report on other seeds "
                          f"(the search chose the settings on it), e.g. --seeds 0,1,2.")

    # config groups as the trials chose them, where they differ from train.yaml's defaults
    choices = {g: c for g, c in hydra_cfg.runtime.choices.items()
               if g != SEARCH_GROUP and g != "hydra" and not g.startswith("hydra/")}
    defaults = compose([], hydra_choices=True).hydra.runtime.choices
    groups = [f"{g}={format_value(c)}" for g, c in choices.items() if defaults.get(g) != c]
    # the trials' own command-line overrides, less the search, the searched keys and the groups
    drop = {SEARCH_GROUP, *best, *RERUN_KEYS, *choices}
    task = [o for o in hydra_cfg.overrides.task if search_key(o) not in drop]
    overrides = [*groups, *task, *best_overrides]
    first = [f"seed={seeds[0]}", f"selection={selection}"]
    want = OmegaConf.to_container(target, resolve=False)
    extra = diff_overrides(want, OmegaConf.to_container(compose(overrides + first), resolve=False), RERUN_KEYS)
    overrides += extra  # values the hparams_search config set (e.g. epochs), not on the command line
    left = diff_overrides(want, OmegaConf.to_container(compose(overrides + first), resolve=False), RERUN_KEYS)
    if left:
        raise SearchError(f"could not rebuild the best trial's config from {trial}: still differs in "
                          f"{left} (has conf/ changed since the search?).")
    overrides += [f"seed={','.join(map(str, seeds))}", f"selection={selection}"]
    return overrides, {"best": best, "best_value": best_value, "trial": best_trial,
                       "search_seed": search_seed, "monitor": target.data.get("monitor")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="the finished search's sweep folder")
    parser.add_argument("--seeds", default="0,1,2", help="reporting seeds, comma-separated (default 0,1,2)")
    parser.add_argument("--selection", choices=SELECTIONS, default="holdout",
                        help="epoch kept by the re-run: holdout (the procedure the search tuned; "
                             "default) or last (as the study's runs)")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds must be integers separated by commas, got {args.seeds!r}")
    if not seeds:
        parser.error("--seeds is empty")
    try:
        overrides, info = rerun_overrides(args.sweep_dir, seeds, args.selection)
    except SearchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    where = f"trial {info['trial'].name}" if info["trial"] is not None else "a trial not in this folder"
    print(f"# best held-out {info['monitor']} {info['best_value']} at {info['best']} ({where}, "
          f"search seed {info['search_seed']}); re-run on seeds {args.seeds} and report dev "
          f"(selection={args.selection}):", file=sys.stderr)
    print(" ".join(["python", "train.py", "-m", *map(shlex.quote, overrides)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
