import pytest
import torch

from deepcuts import budget as B
from deepcuts.errors import ConfigError


@pytest.mark.parametrize(
    ("ratio", "expected"), [(2, 0.3606), (3, 0.1474), (3.5, 0.0865), (4, 0.0408)]
)
def test_bert_base_basis_matches_the_paper(ratio, expected):
    f = B.BASES["bert_base"].keep_fraction(ratio)
    assert f == pytest.approx(expected, abs=5e-5)
    # the definition: total / (never-pruned + kept) is the requested ratio
    b = B.BASES["bert_base"]
    assert b.total / (b.unprunable + f * b.prunable) == pytest.approx(ratio)


def test_model_basis_uses_own_counts():
    b = B.Budget(total=1000, prunable=800)
    assert b.keep_fraction(2) == pytest.approx((1000 / 2 - 200) / 800)
    assert b.max_ratio == pytest.approx(5.0)


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
    excluded = B.prunable_parameters(m, ["bert.encoder.layer.*"], exclude=["*.attention.*"])
    assert not any("attention" in n for n in excluded)
