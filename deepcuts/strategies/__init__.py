"""Pruning scores. Each strategy is one small class whose docstring states its rule, plus one
YAML in ``conf/strategy``; ``scope`` (layer / row / global) is set in the YAML, not in code."""

from deepcuts.strategies.base import Strategy
from deepcuts.strategies.controls import Shuffled
from deepcuts.strategies.gradcam import GradCAM, GradCAMShift
from deepcuts.strategies.integrated import IntegratedGradients
from deepcuts.strategies.magnitude import MagnitudeGrad, MagnitudeWeight, RandomScore
from deepcuts.strategies.movement import Movement
from deepcuts.strategies.saliency import FisherOBD, Snip, Taylor
from deepcuts.strategies.smoothgrad import SmoothGrad, SmoothGradCAM, SmoothGradCAMShift
from deepcuts.strategies.wanda import Wanda

__all__ = [
    "Strategy",
    "MagnitudeWeight",
    "MagnitudeGrad",
    "RandomScore",
    "Shuffled",
    "GradCAM",
    "GradCAMShift",
    "SmoothGrad",
    "SmoothGradCAM",
    "SmoothGradCAMShift",
    "Snip",
    "Taylor",
    "FisherOBD",
    "Wanda",
    "IntegratedGradients",
    "Movement",
]
