"""Pruners. Every class prunes a PyTorch or a Keras model; the framework is chosen from the model."""

from slimkit.algorithms.pruning.filter import FilterPruner
from slimkit.algorithms.pruning.level import LevelPruner
from slimkit.algorithms.pruning.norm import L1FilterPruner, L2FilterPruner

__all__ = ["FilterPruner", "L1FilterPruner", "L2FilterPruner", "LevelPruner"]
