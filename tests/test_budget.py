import pytest
import torch
from torch.nn.utils import prune

from deepcuts.config.errors import ConfigError
from deepcuts.pruning import budget as B

# BERT-base (bert-base-uncased with a 2-way head), as stated in the README: T and P, so N = T - P.
T_BERT, P_BERT = 109_483_778, 85_608_192
N_BERT = 23_875_586


def test_bert_base_basis_holds_the_readme_counts():
    b = B.BASES["bert_base"]
    assert (b.total, b.prunable, b.unprunable) == (T_BERT, P_BERT, N_BERT)
    assert T_BERT - P_BERT == N_BERT
    assert b.max_ratio == pytest.approx(4.5856, abs=1e-4)  # T / N: every prunable weight gone


@pytest.mark.parametrize(
    ("ratio", "percent", "digits"),
    # the README's table: kept fraction of the prunable weights, to the digits it prints
    [(2, 36.1, 1), (3, 14.7, 1), (3.5, 8.65, 2), (4, 4.08, 2)],
)
def test_bert_base_basis_matches_the_paper(ratio, percent, digits):
    f = B.BASES["bert_base"].keep_fraction(ratio)
    assert round(100 * f, digits) == percent
    # exactly (T/c - N)/P with the literal counts, not the basis' own fields
    assert f == pytest.approx((T_BERT / ratio - N_BERT) / P_BERT, rel=1e-12)
    # keeping round(f P) prunable weights, BERT-base has T / non-zero = c (to integer rounding)
    nonzero = N_BERT + round(f * P_BERT)
    assert T_BERT / nonzero == pytest.approx(ratio, rel=1e-7)


def test_bert_base_basis_just_below_the_maximum():
    # c = 4.58 < 4.5856: T/c = 23,904,755.02..., so f = 29,169.02... / P
    f = B.BASES["bert_base"].keep_fraction(4.58)
    assert f * P_BERT == pytest.approx(29_169.02, abs=0.01)


@pytest.mark.parametrize(
    ("total", "prunable", "ratio", "want"),
    [
        # N = 200: f = (1000/c - 200) / 800
        (1000, 800, 2, 0.375),  # (500 - 200) / 800
        (1000, 800, 2.5, 0.25),  # (400 - 200) / 800
        (1000, 800, 4, 0.0625),  # (250 - 200) / 800
        (1000, 800, 1.25, 0.75),  # (800 - 200) / 800
        # everything prunable: f = 1 / c
        (600, 600, 3, 1 / 3),
        (600, 600, 1.5, 2 / 3),
    ],
)
def test_keep_fraction_hand_computed(total, prunable, ratio, want):
    assert B.Budget(total=total, prunable=prunable).keep_fraction(ratio) == pytest.approx(want, rel=1e-12)


def test_model_basis_uses_own_counts():
    own = B.Budget(total=1000, prunable=800)
    assert B.budget_for("model", own) is own
    assert B.budget_for("bert_base", own) is B.BASES["bert_base"]
    assert own.unprunable == 200
    assert own.max_ratio == pytest.approx(5.0)  # 1000 / 200
    assert B.Budget(total=600, prunable=600).max_ratio == float("inf")
    with pytest.raises(ConfigError, match="5.000"):
        own.keep_fraction(5)  # f = 0: nothing left to keep


@pytest.mark.parametrize("ratio", [4.6, 10, 1, 0.5, -3])
def test_unreachable_ratio_fails_naming_the_maximum(ratio):
    with pytest.raises(ConfigError) as err:
        B.BASES["bert_base"].keep_fraction(ratio)
    if ratio > 1:
        assert "4.586" in str(err.value)
    else:
        assert "> 1" in str(err.value)


def test_non_numeric_ratio():
    with pytest.raises(ConfigError, match="must be a number"):
        B.BASES["bert_base"].keep_fraction("three")


def test_unknown_basis():
    with pytest.raises(ConfigError, match="ratio_basis"):
        B.budget_for("bert_large", B.Budget(10, 5))


def test_prunable_set_and_counts():
    from transformers import BertConfig, BertModel

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = BertModel(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16))
            self.head = torch.nn.Linear(8, 2)

    m = M()
    params = B.prunable_parameters(m, ["bert.encoder.layer.*", "bert.pooler.dense"])
    # 6 Linears per layer x 2 layers + pooler, weights and biases
    assert len(params) == (6 * 2 + 1) * 2
    assert "bert.encoder.layer.0.attention.self.query.weight" in params
    assert not any(n.startswith("head") or "embeddings" in n or "LayerNorm" in n for n in params)
    per_layer = 4 * (8 * 8 + 8) + (8 * 16 + 16) + (16 * 8 + 8)
    assert sum(p.numel() for p in params.values()) == 2 * per_layer + 8 * 8 + 8
    with pytest.raises(ConfigError, match="matches no nn.Linear"):
        B.prunable_parameters(m, ["bert.encoder.layers.*"])
    linears = [
        f"bert.encoder.layer.{i}.{part}"
        for i in range(2)
        for part in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense", "intermediate.dense", "output.dense")
    ] + ["bert.pooler.dense"]
    assert set(params) == {f"{lin}.{w}" for lin in linears for w in ("weight", "bias")}
    assert all(params[f"{lin}.weight"] is m.get_submodule(lin).weight for lin in linears)
    excluded = B.prunable_parameters(m, ["bert.encoder.layer.*"], exclude=["*.attention.*"])
    assert set(excluded) == {
        f"bert.encoder.layer.{i}.{part}.{w}"
        for i in range(2) for part in ("intermediate.dense", "output.dense") for w in ("weight", "bias")
    }


def test_counts_of_a_pruned_model_by_hand():
    """count_parameters counts a pruned module's ``weight_orig`` once (not the mask buffer or the
    masked view), and count_nonzero counts ``weight_orig * mask``."""
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [3.0, 4.0, 5.0]]))  # one zero
        net[0].bias.copy_(torch.tensor([0.0, 6.0]))  # one zero
        net[1].weight.copy_(torch.tensor([[7.0, 8.0]]))
    assert B.count_parameters(net) == 6 + 2 + 2
    assert B.count_nonzero(net) == 10 - 2
    prune.custom_from_mask(net[0], "weight", torch.tensor([[1, 1, 0], [0, 1, 1]]))
    # the mask removes 2.0 and 3.0; the kept 0.0 stays a zero
    assert B.count_parameters(net) == 10
    assert B.count_nonzero(net) == 10 - 2 - 2
    params = B.prunable_parameters(net, ["0"])
    assert set(params) == {"0.weight", "0.bias"} and params["0.weight"] is net[0].weight_orig
    assert B.model_budget(net, params) == B.Budget(total=10, prunable=8)


# --- reference models: counts from published configs, built on the meta device -----------------


def test_reference_computation_reproduces_the_bert_base_constants():
    """The same computation the other bases use gives the paper's BERT-base counts exactly."""
    assert B.reference_budget("bert_base") == B.Budget(T_BERT, P_BERT)
    assert B.BASES["bert_base"] == B.Budget(T_BERT, P_BERT)


# BERT-base encoder without pooler: 109,482,240 - 590,592 = 108,891,648; a layer's six Linears
# 7,084,800; the 2-way head 768 * 2 + 2 = 1,538.
@pytest.mark.parametrize(("name", "total", "prunable"), [
    # + (50265 - 30522) words + 2 positions - 1 token type, times 768
    ("roberta_base", 108_891_648 + (19_743 + 2 - 1) * 768 + 1_538, 12 * 7_084_800),
    # 6 layers (Linears + 2 LayerNorms each), word + position embeddings + LayerNorm, no token types
    ("distilbert_base", 6 * (7_084_800 + 2 * 1_536) + (30_522 + 512) * 768 + 1_536 + 1_538, 6 * 7_084_800),
    ("electra_base", 108_891_648 + 1_538, 12 * 7_084_800),  # embedding_size = hidden: no projection
    # 128,100 words, no absolute positions or token types, 2 x 256 relative positions + LayerNorm
    ("deberta_v3_base", 12 * (7_084_800 + 2 * 1_536) + 128_100 * 768 + 1_536 + 512 * 768 + 1_536 + 1_538,
     12 * 7_084_800),
])
def test_other_reference_bases(name, total, prunable):
    basis = B.BASES[name]
    assert (basis.total, basis.prunable) == (total, prunable)
    assert B.budget_for(name, B.Budget(10, 5)) is basis
    assert 1 < basis.max_ratio < B.BASES["bert_base"].max_ratio


def test_bases_cost_nothing_at_import():
    import subprocess
    import sys

    code = ("import sys, deepcuts.pruning.budget as B; assert 'deepcuts.models.module' not in sys.modules; "
            "assert B.reference_budget.cache_info().currsize == 0; assert 'roberta_base' in B.BASES")
    subprocess.run([sys.executable, "-c", code], check=True)
