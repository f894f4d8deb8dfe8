"""DepthwiseConv2D with depth_multiplier > 1 and SeparableConv2D under the quantizers: per-channel
weight scales over the output channels ``c * multiplier + m`` (PyTorch's grouped conv order), and
an int8 TFLite file of a model with both layers that runs in LiteRT with the quantizer's scales.
(The pruners' masks on these layers are checked against PyTorch in test_keras_parity.py.)"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import torch

from slimkit.algorithms.quantization import NaiveQuantizer, PostTrainingQuantizer, QATQuantizer
from slimkit.compression.quant import QParams, fake_quant_numpy
from slimkit.frameworks.tensorflow import export_tflite, run_tflite
from tests.frameworks.tensorflow.keras_layouts import depthwise_to_keras

RNG = np.random.default_rng(5)
X = RNG.uniform(-1, 1, size=(4, 2, 6, 6)).astype(np.float32)  # NCHW


@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("cls", [QATQuantizer, NaiveQuantizer])
def test_depthwise_scales_match_pytorch_grouped_conv(cls, multiplier, tmp_path):
    channels = 2 * multiplier
    weight = RNG.normal(scale=0.5, size=(channels, 1, 3, 3)).astype(np.float32)  # torch Conv2d(2, 2M, groups=2)
    weight[-1] *= 4.0  # the last channel (in 1, multiplier M-1) gets the largest scale
    tmodel = torch.nn.Sequential()
    tmodel.add_module("dw", torch.nn.Conv2d(2, channels, 3, groups=2, bias=False))
    with torch.no_grad():
        tmodel.dw.weight.copy_(torch.from_numpy(weight))
    layer = keras.layers.DepthwiseConv2D(3, depth_multiplier=multiplier, use_bias=False, name="dw")
    kmodel = keras.Sequential([keras.Input((6, 6, 2)), layer])
    layer.set_weights([depthwise_to_keras(weight, multiplier)])
    types = ["weight"] if cls is NaiveQuantizer else ["input", "weight", "output"]
    cfg = [{"quant_types": types, "op_names": ["dw"]}]
    tq, kq = cls(tmodel, cfg), cls(kmodel, cfg)
    tmodel, kmodel = tq.compress(), kq.compress()
    tout = tmodel(torch.from_numpy(X)).detach().numpy().transpose(0, 2, 3, 1)
    kout = np.asarray(kmodel(X.transpose(0, 2, 3, 1), training=True))
    np.testing.assert_allclose(kout, tout, rtol=1e-4, atol=1e-5)
    tcal, kcal = tq.calibration()["dw"], kq.calibration()["dw"]
    expected = np.abs(weight).reshape(channels, -1).max(axis=1) / 127
    np.testing.assert_allclose(kcal["weight_scale"], expected, rtol=1e-6)
    np.testing.assert_allclose(kcal["weight_scale"], tcal["weight_scale"], rtol=1e-6)
    axis = 2 if multiplier == 1 else (2, 3)
    assert (kcal["weight_axis"] if multiplier == 1 else tuple(kcal["weight_axis"])) == axis
    kq.export_model(tmp_path / "m.weights.h5", calibration_path=tmp_path / "calib.json")
    params = QParams.from_dict(json.loads((tmp_path / "calib.json").read_text())["dw"], "weight")
    assert params.axis == axis
    kernel = layer.kernel.numpy()
    np.testing.assert_allclose(fake_quant_numpy(kernel, params), kq.layer("dw").module.quantized_weight(), atol=1e-7)


def depthwise_cnn(second: str) -> keras.Model:
    """DepthwiseConv2D(multiplier 2) then a ``second`` layer ('conv' or 'separable', multiplier 2), pool, dense."""
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", activation="relu", name="dw")(inputs)
    if second == "separable":
        x = keras.layers.SeparableConv2D(6, 3, depth_multiplier=2, activation="relu", name="second")(x)
    else:
        x = keras.layers.Conv2D(6, 3, activation="relu", name="second")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="fc")(x))


def quantized_depthwise_cnn(second: str, x: np.ndarray) -> tuple[keras.Model, PostTrainingQuantizer]:
    """:func:`depthwise_cnn` PTQ-calibrated on ``x[:48]``; with ``second='separable-both'`` the SeparableConv2D's
    depthwise entry ``'second/depthwise'`` is quantized too (its kernel, and as its output the tensor between the
    halves)."""
    keras.utils.set_random_seed(0)
    model = depthwise_cnn(second.split("-")[0])
    names = ["second", "second/depthwise"] if second == "separable-both" else ["second"]
    config = [{"quant_types": ["input", "weight", "output"], "op_names": ["dw"]},
              {"quant_types": ["weight", "output"], "op_names": [*names, "fc"]},
              {"quant_types": ["output"], "op_names": ["gap"]}]
    ptq = PostTrainingQuantizer(model, config, progress=False)
    ptq.calibrate([x[:32], x[32:48]])
    return model, ptq


# Output error of the int8 file in steps of the output scale, against the fake-quant model. With a Conv2D, or a
# SeparableConv2D whose depthwise entry is quantized too, the file computes exactly what the fake-quant model does.
# With only 'second' selected, TF's converter quantizes the depthwise half itself: its kernel per channel as slimkit
# does, and the tensor between the halves from its own calibration on representative_data. Against the model with
# that half quantized as well ('separable-both'), the file is then one step off at most: TF's calibrator gives that
# tensor a slightly narrower range (scale 0.0036588, zero point 4) than slimkit's (0.0036674, 5) on the same batches.
# (This was "up to 2 steps" against the model whose depthwise half is float, with TF calibrating on its random-normal
# samples while the data are uniform in [0, 1], and x drawn from a module-level generator: 3 steps after other tests
# had drawn from it.)
MAX_STEPS = {"conv": 0, "separable": 1, "separable-both": 0}


@pytest.mark.parametrize("second", list(MAX_STEPS))
def test_int8_export_with_depthwise_multiplier_runs_in_litert(tmp_path, second):
    from ai_edge_litert.interpreter import Interpreter

    x = np.random.default_rng(5).uniform(0, 1, size=(64, 8, 8, 2)).astype(np.float32)
    model, ptq = quantized_depthwise_cnn(second, x)
    names = ["second", "second/depthwise"] if second == "separable-both" else ["second"]
    reference_model = quantized_depthwise_cnn("separable-both", x)[0] if second == "separable" else model
    reference = np.asarray(reference_model(x, training=False))
    flatbuffer = export_tflite(model, tmp_path / "m.tflite", quantizer=ptq, representative_data=x[:48])
    steps = np.abs(run_tflite(flatbuffer, x) - reference) / ptq.params["fc"]["output"].scale[0]
    assert np.round(steps.max(), 3) == MAX_STEPS[second]
    interpreter = Interpreter(model_content=flatbuffer)
    assert {"DEPTHWISE_CONV_2D", "CONV_2D"} <= {op["op_name"] for op in interpreter._get_ops_details()}
    scales = [np.asarray(t["quantization_parameters"]["scales"]) for t in interpreter.get_tensor_details()]
    assert ptq.params["dw"]["weight"].scale.shape == (4,)
    for name in ("dw", *names):  # per output channel (c * multiplier + m for dw), the quantizer's scales
        expected = ptq.params[name]["weight"].scale
        assert any(s.shape == expected.shape and np.allclose(s, expected, rtol=1e-6) for s in scales), name
