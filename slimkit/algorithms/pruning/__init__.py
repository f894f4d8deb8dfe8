"""Pruners. Every class prunes a PyTorch or a Keras model; the framework is chosen from the model."""

from slimkit.algorithms.pruning.level import LevelPruner

__all__ = ["LevelPruner"]
