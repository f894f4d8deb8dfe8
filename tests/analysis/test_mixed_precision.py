"""Mixed-precision search: the dynamic program is the exact optimum, the budget holds, the plan is a config_list."""

from __future__ import annotations

import copy
import itertools
import random

import pytest
import torch
from torch import nn

from slimkit import ConfigError
from slimkit.algorithms.quantization import PostTrainingQuantizer, WeightOnlyQuantizer
from slimkit.analysis.mixed_precision import mixed_precision, solve_bits


def brute_force(table, budget):
    layers = list(table)
    best = None
    for combo in itertools.product(*[sorted(table[layer]) for layer in layers]):
        size = sum(table[layer][bits][0] for layer, bits in zip(layers, combo))
        cost = sum(table[layer][bits][1] for layer, bits in zip(layers, combo))
        if size <= budget and (best is None or cost < best):
            best = cost
    return best


def test_dynamic_program_equals_brute_force():
    rng = random.Random(0)
    for case in range(60):
        table = {f"l{i}": {bits: (rng.randint(1, 40) * bits // 4, rng.random() / bits) for bits in
                           rng.sample([4, 8, 16, 32], rng.randint(1, 4))} for i in range(rng.randint(1, 5))}
        smallest = sum(min(size for size, _ in row.values()) for row in table.values())
        largest = sum(max(size for size, _ in row.values()) for row in table.values())
        budget = rng.randint(smallest, largest)
        chosen = solve_bits(table, budget)
        assert list(chosen) == list(table)
        size = sum(table[layer][bits][0] for layer, bits in chosen.items())
        cost = sum(table[layer][bits][1] for layer, bits in chosen.items())
        assert size <= budget, case
        assert cost == pytest.approx(brute_force(table, budget), abs=1e-12), case


def test_budget_is_exact_and_too_small_a_budget_is_named():
    table = {"a": {4: (30, 5.0), 8: (60, 1.0)}, "b": {4: (20, 4.0), 8: (40, 0.0)}, "c": {4: (10, 3.0), 8: (20, 2.0)}}
    assert solve_bits(table, 120) == {"a": 8, "b": 8, "c": 8}       # all wide: exactly 120 bytes
    assert solve_bits(table, 119) == {"a": 8, "b": 8, "c": 4}       # one byte less: the cheapest drop, 110 bytes
    assert solve_bits(table, 60) == {"a": 4, "b": 4, "c": 4}        # exactly the smallest size
    with pytest.raises(ConfigError, match=r"budget_bytes=59 is below the smallest size the candidates allow \(60 "):
        solve_bits(table, 59)


def test_mixed_precision_measures_each_layer_and_returns_a_config_list():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(32, 8)
    plan = mixed_precision(model, [x], budget_bytes=128 + 32, candidates=(4, 8, 32))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert {layer: {b: size for b, (size, _) in row.items()} for layer, row in plan.table.items()} == {
        "0": {4: 64, 8: 128, 32: 512}, "2": {4: 32, 8: 64, 32: 256}}
    # sensitivity of layer '2' at 4 bits: the output MSE with that weight alone quantized per channel
    w = model[2].weight.detach()
    scale = w.abs().amax(dim=1, keepdim=True) / 7
    quantized = copy.deepcopy(model)
    with torch.no_grad():
        quantized[2].weight.copy_(torch.clamp(torch.round(w / scale), -7, 7) * scale)
        expected = float(torch.mean((quantized(x) - model(x)) ** 2))
    assert plan.table["2"][4][1] == pytest.approx(expected, rel=1e-5)
    assert plan.table["0"][32][1] == 0.0
    assert plan.predicted_bytes <= plan.budget_bytes == 160
    assert plan.bits == solve_bits(plan.table, 160)
    assert plan.predicted_bytes == sum(plan.table[layer][b][0] for layer, b in plan.bits.items())
    quantizer = PostTrainingQuantizer(model, plan.config_list, dummy_input=x[:1])
    quantizer.compress()
    quantizer.calibrate([x])
    assert {name: params["weight"].bits for name, params in quantizer.params.items()} == plan.bits
    assert str(plan).splitlines()[0] == f"predicted {plan.predicted_bytes:,} bytes of weights (budget 160)"


def test_bad_arguments_are_named():
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match=r"candidate widths in 2..16"):
        mixed_precision(model, [torch.randn(2, 2)], 100, candidates=(1, 8))
    with pytest.raises(ConfigError, match="no layer of the model matches"):
        mixed_precision(model, [torch.randn(2, 2)], 100, op_types=("Conv2d",))
    with pytest.raises(ConfigError, match="batches is empty"):
        mixed_precision(model, [], 100)


def test_grouped_candidates_are_weight_only_quantizer_grids_and_the_plan_is_its_config_list():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(32, 8)
    plan = mixed_precision(model, [x], budget_bytes=64 + 64, candidates=(4, 8), op_types=("Linear",),
                           group_size={4: 4})
    with torch.no_grad():
        reference = model(x)
        for name, bits, group in (("0", 4, 4), ("2", 4, 4), ("0", 8, -1), ("2", 8, -1)):
            # the sensitivity is the output MSE of the model whose one layer WeightOnlyQuantizer (RTN) quantized
            single = copy.deepcopy(model)
            WeightOnlyQuantizer(single, [{"op_names": [name], "quant_bits": bits, "group_size": group}]).compress()
            expected = float(torch.mean((single(x) - reference) ** 2))
            assert plan.table[name][bits][1] == pytest.approx(expected, rel=1e-6), (name, bits)
    assert plan.bits == solve_bits(plan.table, 128) and plan.predicted_bytes <= 128
    quantizer = WeightOnlyQuantizer(copy.deepcopy(model), plan.config_list)
    quantizer.compress()
    assert {name: (w["bits"], w["group_size"]) for name, w in quantizer.quantized_weights().items()} == {
        name: (bits, 4 if bits == 4 else -1) for name, bits in plan.bits.items()}


def test_groups_that_do_not_fit_a_layer_are_named():
    linear = nn.Sequential(nn.Linear(6, 4))
    with pytest.raises(ConfigError, match=r"layer '0' \(weight \(4, 6\)\) cannot take group_size=4"):
        mixed_precision(linear, [torch.randn(2, 6)], 100, candidates=(4, 8), group_size=4)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(ConfigError, match=r"layer '0' \(weight \(2, 1, 3, 3\)\) cannot take group_size=-1"):
        mixed_precision(conv, [torch.randn(1, 1, 5, 5)], 100, candidates=(4, 8), group_size=-1)
    with pytest.raises(ConfigError, match=r"widths in 2..8 \(or 32\).*candidates=\[4, 16\]"):
        mixed_precision(linear, [torch.randn(2, 6)], 100, candidates=(4, 16), group_size=-1)
