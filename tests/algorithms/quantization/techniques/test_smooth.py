"""The 'smooth' technique (SmoothQuant): float output unchanged, channel ranges moved as the formula says, the
layers it cannot smooth named with the reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.algorithms.quantization.techniques import Smooth, resolve_techniques
from slimkit.algorithms.quantization.techniques.smooth import smoothing_scales
from slimkit.converter import TFLiteConverter
from slimkit.converter.verify import run_tflite
from slimkit.errors import ConfigError
from tests.converter.conftest import op_codes
from tests.hf_zoo import HF_ARCHS, hf_inputs

LINEAR_INT8 = [{"quant_types": ["input", "weight", "output"], "op_types": ["Linear"]}]


class PreNormBlock(nn.Module):
    """q / k from one LayerNorm (smoothable together), fc1 from a Linear, fc2 after GELU, out after a residual add."""

    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(8)
        self.q, self.k = nn.Linear(8, 8), nn.Linear(8, 8)
        self.proj, self.fc1 = nn.Linear(8, 12), nn.Linear(12, 16)
        self.fc2, self.out = nn.Linear(16, 8), nn.Linear(8, 8)

    def forward(self, x):
        h = self.ln(x)
        a = self.q(h) * self.k(h)
        b = self.fc2(nn.functional.gelu(self.fc1(self.proj(a))))
        return self.out(b + x)


def _block_and_data():
    torch.manual_seed(0)
    model = PreNormBlock().eval()
    with torch.no_grad():  # outlier channels, as a trained transformer's LayerNorm gives
        model.ln.weight[[1, 5]] = torch.tensor([20.0, -12.0])
        model.proj.weight[3] *= 40.0
    return model, [torch.randn(4, 6, 8) for _ in range(3)]


def _calibrate(model, batches, technique, config=LINEAR_INT8):
    ptq = PostTrainingQuantizer(model, config, dummy_input=batches[0][:1], techniques=[technique], progress=False)
    ptq.compress()
    ptq.calibrate(batches)
    return ptq, ptq.technique_reports[0]


def _input_maxima(model, names, batches):
    found = {}
    hooks = [model.get_submodule(name).register_forward_pre_hook(
        lambda m, args, name=name: found.__setitem__(name, torch.maximum(
            found.get(name, torch.zeros(args[0].shape[-1])), args[0].abs().reshape(-1, args[0].shape[-1]).amax(0))))
        for name in names]
    with torch.no_grad():
        for x in batches:
            model(x)
    for hook in hooks:
        hook.remove()
    return found


def _assert_float_unchanged(ptq, batches, expected):
    """The wrapped model with fake quantization off (the multiplies and divided weights in place; training mode with
    dropout 0, so the bias is not rounded onto the int32 grid either) computes ``expected`` within 1e-5 relative."""
    dropouts = [m for m in ptq.model.modules() if isinstance(m, nn.Dropout)]
    rates = [m.p for m in dropouts]
    ptq.calibrated = False
    ptq.model.train()
    try:
        for m in dropouts:
            m.p = 0.0
        with torch.no_grad():
            for x, want in zip(batches, expected):
                assert ((ptq.model(x) - want).abs().max() / want.abs().max()).item() <= 1e-5
    finally:
        ptq.calibrated = True
        ptq.model.eval()
        for m, rate in zip(dropouts, rates):
            m.p = rate


def test_block_groups_skips_and_float_output_unchanged():
    model, batches = _block_and_data()
    with torch.no_grad():
        expected = [model(x) for x in batches]
    ptq, report = _calibrate(model, batches, Smooth(explicit=False))
    assert report.technique == "smooth" and report.details["alpha"] == 0.5
    assert report.details["groups"] == {"ln": ["q", "k"], "proj": ["fc1"]}
    assert sorted(report.applied) == ["fc1", "k", "q"]
    assert sorted(report.skipped) == ["fc2", "out", "proj"]
    assert report.skipped["fc2"].startswith("its input comes from 'gelu' in the model's own forward")
    assert report.skipped["out"].startswith("its input comes from 'add'")
    ptq.unwrap_model()
    with torch.no_grad():
        for x, want in zip(batches, expected):
            assert ((model(x) - want).abs().max() / want.abs().max()).item() <= 1e-5


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_scales_follow_the_formula_and_equalise(alpha):
    model, batches = _block_and_data()
    before_x = _input_maxima(model, ["q", "fc1"], batches)
    before_w = {"q": torch.maximum(model.q.weight.abs().amax(0), model.k.weight.abs().amax(0)),
                "fc1": model.fc1.weight.abs().amax(0)}
    ptq, report = _calibrate(model, batches, Smooth(alpha=alpha, explicit=False))
    ptq.unwrap_model()
    after_x = _input_maxima(model, ["q", "fc1"], batches)
    after_w = {"q": torch.maximum(model.q.weight.abs().amax(0), model.k.weight.abs().amax(0)),
               "fc1": model.fc1.weight.abs().amax(0)}
    for name, producer in (("q", "ln"), ("fc1", "proj")):
        s = before_x[name] ** alpha / before_w[name] ** (1 - alpha)
        torch.testing.assert_close(report.details["scales"][producer], s)
        torch.testing.assert_close(after_x[name], before_x[name] / s, rtol=1e-5, atol=0)
        torch.testing.assert_close(after_w[name], before_w[name] * s, rtol=1e-5, atol=0)
        # both sides end at (max|X_j| max|W_j|) ** (alpha (1 - alpha)): equal difficulty at alpha = 0.5
        torch.testing.assert_close(after_x[name] ** alpha, after_w[name] ** (1 - alpha), rtol=1e-5, atol=0)
        if alpha == 0.5:
            torch.testing.assert_close(after_x[name], after_w[name], rtol=1e-5, atol=0)
    # the outlier channels no longer set the input ranges alone
    assert after_x["q"].max() / after_x["q"].median() < before_x["q"].max() / before_x["q"].median()


def test_smoothing_lowers_the_quantization_error():
    model, batches = _block_and_data()
    reference, plain = _block_and_data()[0], _block_and_data()[0]
    _calibrate(model, batches, Smooth(explicit=False))
    PostTrainingQuantizer(plain, LINEAR_INT8, dummy_input=batches[0][:1], progress=False).calibrate(batches)
    with torch.no_grad():
        want = torch.cat([reference(x) for x in batches])
        smoothed = (torch.cat([model(x) for x in batches]) - want).pow(2).mean()
        naive = (torch.cat([plain(x) for x in batches]) - want).pow(2).mean()
    assert smoothed < 0.75 * naive  # measured 0.31 against 0.48


def test_explicit_multiplies_keep_float_and_convert_exactly(tmp_path):
    """Where nothing can absorb a scale: a multiply before the input quantizer (the GELU output into ``fc2``) and
    after the output quantizer (``proj``'s outlier row), float output unchanged, the int8 file equal to the
    integer emulation."""
    model, batches = _block_and_data()
    for x in batches:
        x[..., 2] *= 30.0  # an outlier channel in the residual stream
    with torch.no_grad():
        expected = [model(x) for x in batches]
        proj_peaks = torch.cat([model.proj(model.q(model.ln(x)) * model.k(model.ln(x))) for x in batches])
    ptq, report = _calibrate(model, batches, "smooth")
    # measured input imbalance (max / median channel range): fc2 8.5, out 3.0, proj 2.2; min_ratio 4
    assert report.details["explicit_inputs"] == ["fc2"] and report.details["explicit_outputs"] == ["proj"]
    assert sorted(report.skipped) == ["out", "proj"]  # inputs neither folded nor imbalanced enough
    peaks = proj_peaks.abs().reshape(-1, 12).amax(0) / report.details["scales"]["proj"]
    torch.testing.assert_close(ptq.channel_scales["proj"]["output"], (peaks / peaks.max()).clamp(min=2.0 ** -8))
    _assert_float_unchanged(ptq, batches, expected)
    path = tmp_path / "smooth.tflite"
    TFLiteConverter(model, batches[0], path).convert()
    assert op_codes(path).count("MUL") >= 3  # the block's own q * k, the multiplies before out and after proj
    with torch.no_grad(), ptq.emulate_integer():
        for x in batches:
            np.testing.assert_allclose(run_tflite(path, [x.numpy()])[0], model(x).numpy(), rtol=0, atol=1e-6)


def test_post_norm_bert_folds_nothing_names_why_and_keeps_float():
    """BERT normalises after the residual add, so every LayerNorm output also feeds the next residual add: nothing
    can absorb a scale and every Linear is named with why; the explicit multiplies keep the float function."""
    model, x = HF_ARCHS["bert"]()
    batches = hf_inputs("bert", 3)
    linears = sorted(name for name, m in model.named_modules() if isinstance(m, nn.Linear))
    with torch.no_grad():
        expected = [model(b) for b in batches]
    ptq, report = _calibrate(model, batches, Smooth(explicit=False))
    assert report.applied == [] and sorted(report.skipped) == linears and not ptq.channel_scales
    assert "also feeds 'add'" in report.skipped["model.bert.encoder.layer.0.attention.self.query"]
    assert report.skipped["model.bert.encoder.layer.0.output.dense"].startswith("its input comes from 'gelu'")
    ptq.unwrap_model()
    with torch.no_grad():
        for b, want in zip(batches, expected):
            torch.testing.assert_close(model(b), want, rtol=0, atol=0)
    ptq, report = _calibrate(model, batches, Smooth(min_ratio=1.0))  # every Linear: a multiply on each side
    assert sorted(report.applied) == linears and report.details["groups"] == {}
    assert sorted(report.details["explicit_inputs"]) == sorted(report.details["explicit_outputs"]) == linears
    _assert_float_unchanged(ptq, batches, expected)


def test_pre_norm_vit_smooths_qkv_and_fc1_with_output_unchanged():
    model, x = HF_ARCHS["vit"]()
    batches = hf_inputs("vit", 3)
    with torch.no_grad():
        expected = [model(b) for b in batches]
    ptq, report = _calibrate(model, batches, "smooth")
    layers = [f"model.vit.layers.{i}" for i in range(2)]
    assert report.details["groups"] == {
        **{f"{p}.layernorm_before": [f"{p}.attention.{n}_proj" for n in "qkv"] for p in layers},
        **{f"{p}.layernorm_after": [f"{p}.mlp.fc1"] for p in layers}}
    ptq.unwrap_model()
    with torch.no_grad():
        for b, want in zip(batches, expected):
            assert ((model(b) - want).abs().max() / want.abs().max()).item() <= 1e-5


def test_without_batches_or_graph_every_linear_is_skipped():
    model, batches = _block_and_data()
    ptq = PostTrainingQuantizer(model, LINEAR_INT8, techniques=["smooth"], progress=False)
    ptq.calibrate(batches)
    report = ptq.technique_reports[0]
    assert report.applied == [] and len(report.skipped) == 6
    assert "pass dummy_input" in report.skipped["q"]


def test_alpha_is_validated_and_instances_resolve():
    with pytest.raises(ConfigError, match=r"Expected alpha in \[0, 1\]. Received: alpha=1.5"):
        Smooth(alpha=1.5)
    smooth = Smooth(alpha=0.25)
    assert resolve_techniques([smooth]) == [smooth]
    with pytest.raises(ConfigError, match="Expected each technique once"):
        resolve_techniques(["smooth", smooth])
    assert smoothing_scales(torch.tensor([9.0, 0.0]), torch.tensor([1.0, 3.0]), 0.5).tolist() == [3.0, 1.0]


def test_state_dict_resumes_the_explicit_multiplies():
    model, batches = _block_and_data()
    for x in batches:
        x[..., 2] *= 30.0
    ptq, report = _calibrate(model, batches, "smooth")
    assert report.details["explicit_inputs"] and report.details["explicit_outputs"]
    fresh = PreNormBlock().eval()
    resumed = PostTrainingQuantizer(fresh, LINEAR_INT8, dummy_input=batches[0][:1], progress=False)
    resumed.compress()
    fresh.load_state_dict(model.state_dict())
    resumed.load_state_dict(ptq.state_dict())
    assert sorted(resumed.channel_scales) == sorted(ptq.channel_scales)
    with torch.no_grad():
        for x in batches:
            assert torch.equal(fresh(x), model(x))
