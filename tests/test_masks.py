import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from deepcuts.config.errors import ConfigError
from deepcuts.pruning import masks as M


def test_topk_exact_count_and_ties_by_position():
    score = torch.tensor([3.0, 1.0, 1.0, 1.0, 5.0, 0.0])
    mask = M.topk_mask(score, 3)
    # 5 and 3 are kept, then the first of the tied 1.0 entries
    assert mask.tolist() == [True, True, False, False, True, False]
    assert M.topk_mask(score, 0).sum() == 0 and M.topk_mask(score, 6).all()


def test_all_zero_scores_still_prune_to_the_target():
    """np.quantile ties kept everything when most scores were 0; top-k does not."""
    mask = M.topk_mask(torch.zeros(10), 3)
    assert int(mask.sum()) == 3 and mask[:3].all()


@pytest.mark.parametrize("fraction", [0.3606, 0.1474, 0.0865, 0.0408])
def test_layer_and_global_counts_are_exact(fraction):
    g = torch.Generator().manual_seed(0)
    scores = {"a.weight": torch.rand(37, 53, generator=g), "a.bias": torch.rand(37, generator=g),
              "b.weight": torch.rand(101, 7, generator=g) * 3}
    layer = M.layer_masks(scores, fraction)
    for name, s in scores.items():
        assert int(layer[name].sum()) == round(fraction * s.numel())
    total = sum(s.numel() for s in scores.values())
    glob = M.global_masks(scores, fraction)
    assert sum(int(m.sum()) for m in glob.values()) == round(fraction * total)
    # the global threshold favours the tensor with larger scores
    assert glob["b.weight"].float().mean() > glob["a.weight"].float().mean()
    # every kept score is >= every pruned score overall
    kept = torch.cat([s[glob[n]] for n, s in scores.items()])
    pruned = torch.cat([s[~glob[n]] for n, s in scores.items()])
    assert kept.min() >= pruned.max()


def test_same_scores_same_masks():
    s = {"w": torch.randint(0, 3, (50, 50)).float()}  # many ties
    assert torch.equal(M.layer_masks(s, 0.2)["w"], M.layer_masks(s, 0.2)["w"])
    assert torch.equal(M.global_masks(s, 0.2)["w"], M.global_masks(s, 0.2)["w"])


def test_nan_scores_are_refused_naming_the_tensor():
    with pytest.raises(FloatingPointError, match="layer.0.weight"):
        M.layer_masks({"layer.0.weight": torch.tensor([1.0, float("nan")])}, 0.5)


def test_bad_fraction_and_scope():
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        M.layer_masks({"w": torch.ones(4)}, 0.0)
    with pytest.raises(ConfigError, match="scope"):
        M.build_masks({"w": torch.ones(4)}, 0.5, "rows")


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))


def test_masks_stay_zero_through_adamw_with_weight_decay_and_stale_moments():
    net = _net()
    opt = torch.optim.AdamW(net.parameters(), lr=0.1, weight_decay=0.5)
    x, y = torch.randn(16, 6), torch.randint(0, 2, (16,))
    for _ in range(3):  # dense phase: Adam moments for every entry
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    masks = M.layer_masks({"0.weight": net[0].weight.detach().abs(), "0.bias": net[0].bias.detach().abs()}, 0.4)
    M.apply_masks(net, masks)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1, weight_decay=0.5)
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    assert torch.count_nonzero(net[0].weight[~masks["0.weight"]]) == 0
    assert torch.count_nonzero(net[0].bias[~masks["0.bias"]]) == 0
    assert torch.count_nonzero(net[0].weight_orig[~masks["0.weight"]]) == 0
    assert torch.count_nonzero(net[0].weight[masks["0.weight"]]) == int(masks["0.weight"].sum())


def test_masks_survive_a_state_dict_round_trip_and_fold(tmp_path):
    net = _net()
    masks = M.layer_masks({"2.weight": net[2].weight.detach().abs()}, 0.5)
    M.apply_masks(net, masks)
    torch.save(net.state_dict(), tmp_path / "ckpt.pt")
    other = _net()
    M.apply_masks(other, {"2.weight": torch.ones(2, 5, dtype=torch.bool)})
    other.load_state_dict(torch.load(tmp_path / "ckpt.pt"))
    assert torch.equal(M.current_masks(other)["2.weight"], masks["2.weight"])
    assert torch.count_nonzero(other[2].weight_orig[~masks["2.weight"]]) == 0
    other(torch.randn(1, 6))  # .weight is recomputed as orig * mask on every forward
    assert torch.count_nonzero(other[2].weight[~masks["2.weight"]]) == 0
    M.remove_masks(other)
    assert not prune.is_pruned(other)
    assert torch.count_nonzero(other[2].weight[~masks["2.weight"]]) == 0


def test_mask_shape_mismatch_is_a_clear_error():
    with pytest.raises(ConfigError, match="different model"):
        M.apply_masks(_net(), {"0.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ConfigError, match="names no parameter"):
        M.apply_masks(_net(), {"9.weight": torch.ones(3, 3, dtype=torch.bool)})


def test_global_ties_keep_the_earliest_positions_over_all_tensors():
    scores = {"a": torch.ones(4), "b": torch.ones(3), "c": torch.tensor([2.0, 0.0])}
    masks = M.global_masks(scores, 4 / 9)  # keep 4: the 2.0, then the first three tied ones
    assert masks["c"].tolist() == [True, False]
    assert masks["a"].tolist() == [True, True, True, False] and not masks["b"].any()
