"""Whole models against LiteRT: slimkit.models and the test models in tests/converter/models.py."""

from __future__ import annotations

import pytest
import torch

from slimkit.models import mobilenet_v2, resnet18, resnet50
from tests.converter.models import converter_test_models

MODELS = converter_test_models()


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("nchw_transpose", [True, False])
def test_test_models(name, nchw_transpose, check):
    model, x = MODELS[name]
    check(model, x, nchw_transpose=nchw_transpose)


@pytest.mark.parametrize("factory", [resnet18, mobilenet_v2])
def test_zoo_small_input(factory, check):
    torch.manual_seed(0)
    check(factory(num_classes=10), torch.randn(1, 3, 32, 32))


@pytest.mark.slow
@pytest.mark.parametrize("factory", [resnet18, mobilenet_v2, resnet50])
def test_zoo_224(factory, check):
    torch.manual_seed(0)
    check(factory(), torch.randn(1, 3, 224, 224))


def test_batch_of_two(check):
    torch.manual_seed(0)
    check(resnet18(num_classes=10), torch.randn(2, 3, 32, 32))


def _shared_zoo():
    try:
        from slimkit.models.zoo import ZOO
    except ImportError:  # the shared zoo lands with the speedup branch
        return []
    return sorted(ZOO)


@pytest.mark.slow
@pytest.mark.parametrize("name", _shared_zoo())
def test_shared_zoo(name, check):
    from slimkit.models.zoo import build

    model, x = build(name)
    check(model, x)


def test_conversion_leaves_the_model_untouched(tmp_path):
    from slimkit.converter import TFLiteConverter

    torch.manual_seed(0)
    model = resnet18(num_classes=10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    TFLiteConverter(model, torch.randn(1, 3, 32, 32), tmp_path / "m.tflite").convert()
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_module_called_twice(check):
    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                            torch.nn.ReLU())

        def forward(self, x):
            return torch.cat([self.head(x), self.head(torch.nn.functional.max_pool2d(x, 2)).repeat(1, 1, 2, 2)], 1)

    check(Shared(), torch.randn(1, 4, 8, 8))
