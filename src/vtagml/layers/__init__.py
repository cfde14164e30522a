"""Reusable adapter building blocks (pure, shape-documented); baselines import them too."""

from vtagml.layers.bottleneck import BottleneckAdapter
from vtagml.layers.taa import TaskAdaptedAttentionBias, block_diagonal_bias
from vtagml.layers.task_embedding import TaskEmbeddings
from vtagml.layers.tsn import TaskScaledNorm

__all__ = ["BottleneckAdapter", "TaskAdaptedAttentionBias", "TaskEmbeddings", "TaskScaledNorm",
           "block_diagonal_bias"]
