"""DeepCuts: single-shot, interpretability-based pruning of BERT."""

__version__ = "0.1.0"
