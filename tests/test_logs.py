"""What a job prints when its output goes to a file: progress lines, no library noise, and no
stray folders or lock files left behind."""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from deepcuts.cache.store import StageCache
from deepcuts.config.errors import ConfigError
from deepcuts.pipeline.flow import run
from deepcuts.runtime.logs import quiet_third_party
from deepcuts.runtime.progress import LabelledRichBar, LogProgress, progress_callbacks
from deepcuts.runtime.tracking import run_location

RANK_ZERO = "pytorch_lightning.utilities.rank_zero"
TIP = "💡 Tip: For seamless cloud logging"
NO_OPTIMIZER = "this fit will run with no optimizer"
LINE = re.compile(r"step (\d+)/(\d+) \| [\d.]+ it/s \| ETA \d+:\d\d:\d\d")


class Records(logging.Handler):
    """The messages of one logger, attached to it directly (whatever propagates or not)."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.logger, self.messages = logging.getLogger(name), []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> list[str]:
        self.level_before = self.logger.level
        self.logger.addHandler(self)
        self.logger.setLevel(logging.INFO)
        return self.messages

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level_before)


def test_a_job_in_a_file_logs_progress_per_stage_and_no_library_noise(make_cfg, tmp_path, capsys, recwarn):
    assert not sys.stdout.isatty()  # pytest's capture: what nohup/CI/SLURM see
    cfg = make_cfg("data=stsb", "strategy=gradcam_shift", "epochs_dense=2", "scoring.batches=1000",
                   "trainer.enable_progress_bar=true", "progress.every_n_steps=2")
    with Records("deepcuts") as ours, Records(RANK_ZERO) as lightning:
        run(cfg)
    printed = capsys.readouterr()

    def lines(prefix: str) -> list[str]:
        return [m for m in ours if m.startswith(prefix + " |")]

    dense, scoring, masked = lines("dense fine-tune"), lines("scoring gradcam_shift"), lines("masked fine-tune")
    for stage, got in (("dense", dense), ("scoring", scoring), ("masked", masked)):
        steps = [tuple(map(int, m.groups())) for line in got if (m := LINE.search(line))]
        assert len(steps) >= 2, f"{stage}: no periodic progress lines with steps/total and ETA in {got}"
        assert all(0 < done <= total for done, total in steps), steps
        assert len(set(steps)) == len(steps), steps  # no line twice
        assert [d for d, _ in steps] == sorted(d for d, _ in steps)
        assert any("done:" in line for line in got), f"{stage}: no end line in {got}"
    # 48 examples / batch 8: 6 steps per epoch; the dense stage counts both epochs
    assert {total for line in dense if (m := LINE.search(line)) for total in [int(m.group(2))]} == {12}
    assert any("epoch 1/2" in line for line in dense) and any("epoch 2/2" in line for line in dense)
    assert all("train/loss" in line for line in dense + masked if LINE.search(line))
    assert {int(m.group(2)) for line in scoring if (m := LINE.search(line))} == {6}
    assert "Epoch 0/" not in printed.out + printed.err  # Lightning's bar, printed finished, is gone
    # the cap on scoring.batches is said once
    cap = [m for m in ours if "capped at one pass" in m]
    assert cap == ["scoring.batches=1000 capped at one pass over the train set: 6 batches"]
    # Lightning's noise: no litlogger tip, no "no optimizer" warning for the scoring pass
    assert not [m for m in lightning if TIP in m], lightning
    assert not [w for w in recwarn if NO_OPTIMIZER in str(w.message)], [str(w.message) for w in recwarn]
    assert TIP not in printed.out + printed.err and NO_OPTIMIZER not in printed.out + printed.err
    # no empty checkpoints/ folder in the run, no lock files in the cache
    assert not (tmp_path / "run" / "checkpoints").exists(), sorted(p.name for p in (tmp_path / "run").iterdir())
    assert not list((tmp_path / "cache").rglob("*.lock"))


def test_no_progress_lines_when_the_bar_is_disabled(make_cfg, capsys):
    with Records("deepcuts.runtime.progress") as ours:
        run(make_cfg("data=stsb", "strategy=layer_mag_grad", "progress.every_n_steps=1"))  # conftest: bar off
    assert ours == []
    printed = capsys.readouterr()
    assert "Epoch 0/" not in printed.out + printed.err


def test_where_progress_goes(monkeypatch):
    monkeypatch.setattr(sys, "stdout", SimpleNamespace(isatty=lambda: False, write=lambda s: None))
    (cb,) = progress_callbacks({"every_n_steps": 5, "every_s": None}, "dense fine-tune")
    assert isinstance(cb, LogProgress) and cb.every_n_steps == 5 and cb.every_s is None
    assert progress_callbacks(None, "x", enable_progress_bar=False) == []
    assert progress_callbacks({"mode": "bar"}, "x") == []
    monkeypatch.setattr(sys, "stdout", SimpleNamespace(isatty=lambda: True, write=lambda s: None))
    assert progress_callbacks({"mode": "auto"}, "x") == []  # a terminal keeps Lightning's bar
    (bar,) = progress_callbacks({"mode": "auto"}, "scoring snip", label_bar=True)  # not "Epoch 0/0"
    assert isinstance(bar, LabelledRichBar) and bar._get_train_description(0) == "scoring snip"
    assert len(progress_callbacks({"mode": "log"}, "x")) == 1
    with pytest.raises(ConfigError, match="progress.mode"):
        progress_callbacks({"mode": "sometimes"}, "x")
    with pytest.raises(ConfigError, match="progress.every_s"):
        progress_callbacks({"every_s": 0}, "x")


def test_lightning_tip_dropped_and_device_lines_once():
    from pytorch_lightning.utilities.rank_zero import rank_zero_info

    quiet_third_party()
    device = f"GPU available: test-{time.monotonic_ns()}, used: False"  # unseen in this process
    with Records(RANK_ZERO) as got:
        rank_zero_info(  # Lightning 2.6's words
            "💡 Tip: For seamless cloud logging and experiment tracking, try installing "
            "[litlogger](https://pypi.org/project/litlogger/) to enable LitLogger, which logs metrics ..."
        )
        rank_zero_info(device)
        rank_zero_info(device)
        rank_zero_info("`Trainer.fit` stopped: `max_epochs=1` reached.")
        rank_zero_info("`Trainer.fit` stopped: `max_time` reached.")
    assert got == [device, "`Trainer.fit` stopped: `max_time` reached."]


def test_third_party_deprecation_filtered_not_others():
    from pytorch_lightning.utilities._pytree import _tree_flatten

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        _tree_flatten(1)  # torch's LeafSpec deprecation, raised inside Lightning
        warnings.warn("the user's own FutureWarning", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["the user's own FutureWarning"]


def test_wandb_line_says_where_and_how_to_sync(tmp_path):
    folder = tmp_path / "wandb" / "offline-run-x"
    offline = SimpleNamespace(name="r", offline=True, settings=SimpleNamespace(mode="offline", sync_dir=str(folder)))
    assert run_location(offline) == f"W&B run r saved offline in {folder}; upload it with: wandb sync {folder}"
    online = SimpleNamespace(name="r", offline=False, settings=SimpleNamespace(mode="online"), url="https://x/r")
    assert run_location(online) == "W&B run r: https://x/r"


def test_cache_lock_is_removed_and_still_serialises_builders(tmp_path):
    cache = StageCache(tmp_path)
    started, built = threading.Event(), []

    def slow(d):
        started.set()
        time.sleep(0.5)
        built.append(1)
        (d / "x.txt").write_text("x")

    first = threading.Thread(target=cache.get_or_build, args=("dense", {"a": 1}, slow))
    first.start()
    started.wait(10)
    second = cache.get_or_build("dense", {"a": 1}, slow)  # waits for the first, then hits its entry
    first.join()
    assert built == [1] and (second / "x.txt").read_text() == "x"
    assert cache.hits == ["dense"]
    assert not list(tmp_path.rglob("*.lock"))


def test_the_last_line_says_what_was_asked_and_what_was_reached():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_script", Path(__file__).resolve().parents[1] / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    results = {"data": "stsb", "strategy": "gradcam_shift", "seed": 0, "ratio": 3.0, "ratio_basis": "bert_base",
               "keep_fraction": 0.14736, "achieved_ratio": 1.6803, "total_parameters": 22_713_986,
               "nonzero_parameters": 13_518_029, "monitor": "pearson", "dense": {"pearson": 0.784},
               "pruned": {"pearson": 0.7602}, "structure": None}
    line = train.summary_line(results)
    assert line == ("stsb gradcam_shift seed=0: ratio 3 on the bert_base basis (keep 14.7% of prunable weights) -> "
                    "achieved 1.68 on this model (22.7M -> 13.5M non-zero); dense pearson=0.7840, pruned pearson=0.7602")
    own = train.summary_line({**results, "ratio_basis": "model", "dense_skipped": True,
                              "structure": {"heads_kept": [2, 2], "neurons_kept": [183, 183]}})
    assert "ratio 3 on the model's own counts" in own and "dense skipped" in own
    assert "heads kept per layer [2, 2], FFN widths [183, 183]" in own
    asked = train.summary_line({**results, "keep_fraction": 0.2}, keep_fraction_given=True)
    assert "keep_fraction 0.2 (20.0% of prunable weights) -> achieved 1.68" in asked
    levers = train.summary_line({**results, "recipe": {"shots": 3, "distill": {"alpha": 0.5, "temperature": 2.0},
                                                       "rewind": "epoch:1"}})
    assert levers.startswith("stsb gradcam_shift seed=0 (shots=3, distill alpha=0.5 T=2, rewind=epoch:1): ratio 3")
    plain = train.summary_line({**results, "recipe": {"shots": 1, "distill": None, "rewind": "pretrained"}})
    assert plain == line
