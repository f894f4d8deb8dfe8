"""Pruners. Every class prunes a PyTorch or a Keras model; the framework is chosen from the model.

Each pruner registers itself under a short name (:mod:`slimkit.algorithms.pruning.registry`):
``'level'``, ``'l1'``, ``'l2'``, ``'fpgm'``, ``'apoz'``, ``'mean_activation'``, ``'slim'``,
``'agp'``, ``'lottery'``. ``WandaPruner`` and ``SparseGPTPruner`` (calibrated, PyTorch Linear layers) stand
outside the registry.
"""

from slimkit.algorithms.pruning.activation import (
    ActivationAPoZRankFilterPruner,
    ActivationMeanRankFilterPruner,
    ActivationRankFilterPruner,
)
from slimkit.algorithms.pruning.agp import AGPPruner
from slimkit.algorithms.pruning.filter import FilterPruner
from slimkit.algorithms.pruning.fpgm import FPGMPruner
from slimkit.algorithms.pruning.level import LevelPruner
from slimkit.algorithms.pruning.lottery import LotteryTicketPruner
from slimkit.algorithms.pruning.norm import L1FilterPruner, L2FilterPruner
from slimkit.algorithms.pruning.registry import PRUNERS, get_pruner, register_pruner
from slimkit.algorithms.pruning.slim import SlimPruner
from slimkit.algorithms.pruning.sparsegpt import SparseGPTPruner
from slimkit.algorithms.pruning.wanda import WandaPruner

__all__ = [
    "PRUNERS",
    "AGPPruner",
    "ActivationAPoZRankFilterPruner",
    "ActivationMeanRankFilterPruner",
    "ActivationRankFilterPruner",
    "FPGMPruner",
    "FilterPruner",
    "L1FilterPruner",
    "L2FilterPruner",
    "LevelPruner",
    "LotteryTicketPruner",
    "SlimPruner",
    "SparseGPTPruner",
    "WandaPruner",
    "get_pruner",
    "register_pruner",
]
