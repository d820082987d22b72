"""The run: a plan checked before any training, then the paper's stages in order."""

from deepcuts.pipeline.flow import run

__all__ = ["run"]
