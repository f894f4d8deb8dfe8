"""NNI's positional constructor calls work unchanged (docs/migration/nni.md: "port by changing imports")."""

from __future__ import annotations

import torch
from torch import nn

from slimkit.algorithms.pruning import (
    ActivationAPoZRankFilterPruner,
    ActivationMeanRankFilterPruner,
    AGPPruner,
    FPGMPruner,
    L1FilterPruner,
    L2FilterPruner,
    LevelPruner,
    LotteryTicketPruner,
    SlimPruner,
)
from slimkit.algorithms.quantization import BNNQuantizer, DoReFaQuantizer, NaiveQuantizer, QAT_Quantizer

CONV = [{"sparsity": 0.5, "op_types": ["Conv2d"]}]
QUANT = [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Conv2d"]}]


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))


def _trainer(model, optimizer, criterion, epoch):
    return None


def test_quantizers_take_optimizer_and_dummy_input_positionally():
    model = _model()
    optimizer, x = torch.optim.SGD(model.parameters(), lr=0.1), torch.randn(1, 1, 8, 8)
    qat = QAT_Quantizer(model, QUANT, optimizer, x)  # NNI: QAT_Quantizer(model, config_list, optimizer, dummy_input)
    assert qat.optimizer is optimizer and qat.dummy_input is x
    for cls in (DoReFaQuantizer, BNNQuantizer, NaiveQuantizer):  # NNI: cls(model, config_list, optimizer)
        quantizer = cls(_model(), QUANT, optimizer)
        assert quantizer.optimizer is optimizer and quantizer.dummy_input is None


def test_pruners_take_nni_positional_arguments():
    model = _model()
    optimizer, criterion = torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss()
    agp = [{"final_sparsity": 0.5, "end_epoch": 2, "op_types": ["Conv2d"]}]
    assert AGPPruner(model, agp, optimizer, pruning_algorithm="l1").optimizer is optimizer
    slim = SlimPruner(_model(), [{"sparsity": 0.5, "op_types": ["BatchNorm2d"]}], optimizer, _trainer, criterion)
    assert (slim.optimizer, slim.trainer, slim.criterion) == (optimizer, _trainer, criterion)
    for cls in (ActivationAPoZRankFilterPruner, ActivationMeanRankFilterPruner):
        pruner = cls(_model(), CONV, optimizer, _trainer, criterion)
        assert (pruner.optimizer, pruner.trainer, pruner.criterion) == (optimizer, _trainer, criterion)
    for cls in (LevelPruner, L1FilterPruner, L2FilterPruner, FPGMPruner):  # NNI: cls(model, config_list, optimizer)
        assert cls(_model(), CONV, optimizer).optimizer is optimizer
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    lottery = LotteryTicketPruner(model, [{"sparsity": 0.5, "prune_iterations": 2, "op_types": ["Conv2d"]}],
                                  optimizer, scheduler)
    assert (lottery.optimizer, lottery.lr_scheduler) == (optimizer, scheduler)
