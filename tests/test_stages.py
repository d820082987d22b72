"""The pieces the run plan is made of: the cache admin and the stages it knows, readers' locks,
the teacher rows a distilled batch reads, and k-shot's nested masks."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from deepcuts.cache import admin
from deepcuts.cache.store import StageCache
from deepcuts.pipeline.kshot import run_rounds
from deepcuts.pipeline.stage import Stage
from deepcuts.pipeline.stages import dense, levers, scores  # noqa: F401  (registers the Stage subclasses)
from deepcuts.pruning import masks as M
from deepcuts.pruning.schedule import keep_schedule
from deepcuts.pruning.selectors import ElementSelector
from deepcuts.training.distill import DistillSettings, Teacher


def test_the_cache_admin_knows_every_stage():
    names = {cls.name for cls in Stage.__subclasses__() if cls.__module__.startswith("deepcuts.")}
    assert names == {"dense", "teacher", "rewind", "scores"}
    assert set(admin.STAGES) == names | {"runs", "data"}


def test_an_entry_a_job_uses_is_never_pruned(tmp_path):
    """Hole 5: the reader holds a shared lock on the entry for the job's duration (the build
    lock is gone once get_or_build returns). Mutation checked: without StageCache._hold the
    entry is deleted under the reader."""
    cache = StageCache(tmp_path)
    entry = cache.get_or_build("scores", {"x": 1}, lambda d: (d / "scores.safetensors").write_text("s"))
    assert admin.prune(tmp_path, ("scores",)) == [] and entry.is_dir()
    cache.close()  # the job ended
    assert [p for p, _ in admin.prune(tmp_path, ("scores",))] == [entry] and not entry.exists()


def test_a_found_entry_is_held_too(tmp_path):
    StageCache(tmp_path).get_or_build("dense", {"x": 1}, lambda d: (d / "m").write_text("m"))
    reader = StageCache(tmp_path)
    entry = reader.lookup("dense", {"x": 1})
    assert entry is not None and admin.prune(tmp_path, ("dense",)) == []
    reader.close()
    assert len(admin.prune(tmp_path, ("dense",))) == 1


def test_a_distilled_batch_reads_its_own_examples_teacher_rows():
    """Mutation checked: reading rows 0..B-1 instead of the batch's example_index fails this."""
    table = torch.tensor([[0.0, 1.0], [3.0, 0.0], [1.0, 1.0], [2.0, 5.0], [0.0, 4.0], [6.0, 1.0]])  # softmax differs per row
    teacher = Teacher(table, DistillSettings(alpha=1.0, temperature=1.0))
    student = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    batch = {"example_index": torch.tensor([4, 1]), "labels": torch.tensor([0, 1])}
    got = teacher.loss(student, batch, F.cross_entropy, regression=False)
    want = F.kl_div(F.log_softmax(student, -1), F.log_softmax(table[[4, 1]], -1), reduction="batchmean", log_target=True)
    assert torch.allclose(got, want)


def test_kshot_rounds_keep_nested_masks_with_exact_counts():
    """Each round prunes only among the weights the round before kept, even when re-scoring
    ranks pruned weights high (random scores here). Mutation checked: dropping restrict() in
    run_rounds fails this test."""
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 4))
    names = [n for n, _ in model.named_parameters()]
    gen = torch.Generator().manual_seed(0)

    def random_scores(_model=None, _round=None):
        return {n: torch.rand(p.shape, generator=gen) for n, p in model.named_parameters()}

    seen = []

    def fine_tune_round(m, t):
        seen.append(M.current_masks(m))
        return {"selected": {}}

    schedule = keep_schedule(0.2, 4)
    selector = ElementSelector("layer")
    final_scores, rounds = run_rounds(random_scores(), schedule, selector, model, fine_tune_round, random_scores)
    final = selector.select(final_scores, schedule[-1])
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for before, after in zip([*seen, final][:-1], [*seen, final][1:], strict=True):
        for n in names:
            assert not (after[n] & ~before[n]).any()  # nothing kept that the round before pruned
    total = sum(p.numel() for p in model.parameters())
    assert all(r["kept"] == sum(int(m.sum()) for m in s.values()) for r, s in zip(rounds, seen, strict=True))
    assert sum(int(m.sum()) for m in final.values()) < sum(int(m.sum()) for m in seen[-1].values()) < total


def test_a_stage_key_holds_every_field_not_declared_runtime():
    @dataclasses.dataclass
    class Toy(Stage):
        name = "toy"
        a: int
        b: str
        live: object = dataclasses.field(default=None, metadata={"key": False, "why": "test"})

    spec = Toy(1, "x", live=object()).spec()
    assert {"a", "b", "code"} == set(spec) and Toy(1, "x").key() != Toy(2, "x").key()
    assert Toy(1, "x", live=1).key() == Toy(1, "x", live=2).key()
