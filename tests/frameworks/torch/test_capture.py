"""capture_graph's fast path (make_fx pre-dispatch) yields exactly torch.export's graph, or declines."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit.frameworks.torch.graph as graph_module
from slimkit.frameworks.torch.graph import capture_graph
from slimkit.models.zoo import ZOO, build
from tests.converter.models import converter_test_models
from tests.converter.test_fake_quant import FakeQuantNet


def _describe(captured):
    rows = []
    for n in captured.graph.nodes:
        val = n.meta.get("val")
        args = torch.fx.node.map_arg((n.args, n.kwargs), lambda a: a.name)
        tensor = captured.tensor(n)
        rows.append((n.op, n.name, str(n.target), str(args),
                     tuple(val.shape) if isinstance(val, torch.Tensor) else None,
                     captured.module_path(n), captured.call_index(n),
                     str(n.meta.get("nn_module_stack")) if n.op == "call_function" else None,
                     captured.state_names.get(n.name), None if tensor is None else tuple(tensor.shape)))
    return rows


def _both(model, inputs, monkeypatch):
    fast = capture_graph(model, inputs)
    monkeypatch.setattr(graph_module, "_FAST_CAPTURE", False)
    exported = capture_graph(model, inputs)
    monkeypatch.setattr(graph_module, "_FAST_CAPTURE", True)
    return fast, exported


class TiedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.out = nn.Linear(4, 10, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens):
        return self.out(self.embed(tokens))


class Extras(nn.Module):
    """Non-persistent buffer, tensor constant, a module called twice, keyword default, dict output."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 4)
        self.register_buffer("offset", torch.ones(4), persistent=False)

    def forward(self, x, scale: float = 2.0):
        y = self.head(x) + self.offset
        y = self.head(y) * torch.tensor(scale)
        return {"y": y, "shape": x.shape[0]}


class OddState(nn.Module):
    """A buffer viewing another, a channels-last weight, an nn.Buffer (attributes on the tensor)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.randn(6, 4))
        self.register_buffer("rows", self.table[2:])
        self.conv = nn.Conv2d(4, 4, 1)
        self.conv.weight = nn.Parameter(self.conv.weight.detach().to(memory_format=torch.channels_last))
        self.shift = nn.Buffer(torch.ones(4, 1, 1))

    def forward(self, x):
        return self.conv(x) + self.shift + self.rows.sum() + self.table[0].view(4, 1, 1)


class NoGradInside(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        with torch.no_grad():
            y = self.lin(x)
        return y + 1


class DataDependent(nn.Module):
    def forward(self, x):
        return x[x > 0].sum() + x.nonzero().shape[0]


class PythonMax(nn.Module):
    def forward(self, x):
        return max(x, torch.zeros_like(x)) + 1


class VarArgs(nn.Module):
    """``forward(self, a, *rest)``: placeholders ``a``, ``rest_0``, ``rest_1`` (torch.export's names)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, a, *rest):
        return self.lin(a) + rest[0] * rest[1]


def _cases():
    cases = {f"zoo/{name}": build(name) for name in sorted(ZOO)}
    cases.update({f"tests/{name}": mx for name, mx in converter_test_models().items()})
    cases["fake_quant"] = (FakeQuantNet(), torch.randn(1, 3, 8, 8))
    cases["tied"] = (TiedHead(), torch.randint(0, 10, (2, 3)))
    cases["extras"] = (Extras(), torch.randn(2, 4))
    cases["odd_state"] = (OddState(), torch.randn(1, 4, 3, 3))
    cases["no_grad_inside"] = (NoGradInside(), torch.randn(2, 4))
    cases["gru"] = (nn.GRU(4, 6, batch_first=True), torch.randn(2, 5, 4))
    cases["python_max"] = (PythonMax(), torch.randn(2, 4))
    cases["var_args"] = (VarArgs(), (torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4)))
    return cases


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_fast_capture_equals_torch_export(name, monkeypatch):
    model, x = CASES[name]
    inputs = x if isinstance(x, tuple) else (x,)
    fast, exported = _both(model.eval(), inputs, monkeypatch)
    assert _describe(fast) == _describe(exported)
    assert list(fast.program.graph_signature.user_inputs) == list(exported.program.graph_signature.user_inputs)
    for node in fast.graph.nodes:
        a, b = fast.tensor(node), exported.tensor(node)
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(n for n in CASES if n.startswith("zoo/"))
                         + ["fake_quant", "extras", "odd_state", "var_args"])
def test_fast_path_taken(name):
    model, x = CASES[name]
    graph_module._fast_program(model.eval(), x if isinstance(x, tuple) else (x,))


def test_declined_structures_still_capture(monkeypatch):
    # attribute assignment in forward (LSTM's flat weights), grad-mode regions, data-dependent shapes
    for model, x in [(nn.LSTM(4, 6, batch_first=True), torch.randn(2, 5, 4)), (NoGradInside(), torch.randn(2, 4))]:
        with pytest.raises(graph_module._Declined):
            graph_module._fast_program(model.eval(), (x,))
        assert list(capture_graph(model, (x,)).call_nodes())
    model, x = DataDependent(), torch.randn(3, 4)
    with pytest.raises(graph_module._Declined, match="symbolic shapes"):
        graph_module._fast_program(model, (x,))
    try:
        exported = capture_graph(model, (x,))
    except Exception as error:  # torch.export's own verdict stands
        assert type(error).__name__ == "UnsupportedOpError"
    else:
        assert list(exported.call_nodes())


class Tagged(torch.Tensor):
    """A tensor subclass (with the default __torch_function__)."""


def test_subclass_tensors_and_disabled_torch_functions_decline():
    model, x = nn.Linear(4, 4).eval(), torch.randn(2, 4)
    with pytest.raises(graph_module._Declined, match="tensor subclass"):
        graph_module._fast_program(model, (x.as_subclass(Tagged),))
    with torch._C.DisableTorchFunction(), pytest.raises(graph_module._Declined, match="torch functions disabled"):
        graph_module._fast_program(model, (x,))
    model.register_buffer("scale", torch.ones(4).as_subclass(Tagged))
    with pytest.raises(graph_module._Declined, match="tensor subclass"):
        graph_module._fast_program(model, (x,))


def test_train_eval_modes_restored_module_by_module():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).train()
    model[1].eval()  # a frozen BatchNorm inside a model being trained
    captured = capture_graph(model, (torch.randn(1, 3, 6, 6),))
    assert [m.training for m in model.modules()] == [True, True, False, True]
    assert "aten.batch_norm.default" in [str(n.target) for n in captured.call_nodes()]


def test_str_program_lists_signature():
    model, x = CASES["extras"]
    text = str(capture_graph(model, (x,)).program)
    assert "p_head_weight: PARAMETER target='head.weight'" in text and "x: USER_INPUT" in text
