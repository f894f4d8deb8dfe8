"""The quantizer classes on Keras models: the same formulas as on PyTorch (a torch model and its Keras
twin with the same weights give the same fake-quant outputs, scales and straight-through gradients),
QAT inside ``fit`` with the callback, and calibration / errors."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch

from slimkit.algorithms.quantization import (
    BNNQuantizer,
    DoReFaQuantizer,
    NaiveQuantizer,
    PostTrainingQuantizer,
    QATQuantizer,
)
from slimkit.errors import SlimkitError, UnsupportedOpError
from slimkit.frameworks.tensorflow import CompressionCallback

RNG = np.random.default_rng(0)
CONV_W = RNG.normal(scale=0.5, size=(4, 2, 3, 3)).astype(np.float32)   # torch layout (out, in, kh, kw)
CONV_B = RNG.normal(scale=0.1, size=4).astype(np.float32)
FC_W = RNG.normal(scale=0.5, size=(3, 4)).astype(np.float32)           # (out, in)
FC_B = RNG.normal(scale=0.1, size=3).astype(np.float32)
X = RNG.uniform(-1, 1, size=(6, 2, 6, 6)).astype(np.float32)           # NCHW


def torch_twin() -> torch.nn.Module:
    model = torch.nn.Sequential()
    model.add_module("conv", torch.nn.Conv2d(2, 4, 3))
    model.add_module("pool", torch.nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", torch.nn.Flatten())
    model.add_module("fc", torch.nn.Linear(4, 3))
    with torch.no_grad():
        model.conv.weight.copy_(torch.from_numpy(CONV_W))
        model.conv.bias.copy_(torch.from_numpy(CONV_B))
        model.fc.weight.copy_(torch.from_numpy(FC_W))
        model.fc.bias.copy_(torch.from_numpy(FC_B))
    return model


def keras_twin() -> keras.Model:
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3, name="conv"),
                              keras.layers.GlobalAveragePooling2D(name="pool"), keras.layers.Dense(3, name="fc")])
    model.get_layer("conv").set_weights([CONV_W.transpose(2, 3, 1, 0), CONV_B])
    model.get_layer("fc").set_weights([FC_W.T, FC_B])
    return model


def config(conv_types: list[str], fc_types: list[str], bits: int = 8) -> list[dict]:
    """Selected by name: the layers are called 'conv' and 'fc' in both twins."""
    return [{"quant_types": conv_types, "quant_bits": bits, "op_names": ["conv"]},
            {"quant_types": fc_types, "quant_bits": bits, "op_names": ["fc"]}]


CASES = {
    "naive": (NaiveQuantizer, config(["weight"], ["weight"]), {}),
    "qat": (QATQuantizer, config(["input", "weight", "output"], ["weight", "output"]), {}),
    "ptq-minmax": (PostTrainingQuantizer, config(["input", "weight", "output"], ["weight", "output"]),
                   {"algorithm": "minmax", "progress": False}),
    "ptq-l2": (PostTrainingQuantizer, config(["weight", "output"], ["weight", "output"]),
               {"algorithm": "l2", "progress": False}),
    "ptq-kl": (PostTrainingQuantizer, config(["weight", "output"], ["weight", "output"]),
               {"algorithm": "kl", "progress": False}),
    "dorefa": (DoReFaQuantizer, config(["weight", "output"], ["weight"], bits=3), {}),
    "bnn": (BNNQuantizer, config(["weight", "output"], ["weight"], bits=1), {}),
}


def _compress(cls, cfg, kwargs, model, batches):
    quantizer = cls(model, cfg, **kwargs)
    model = quantizer.compress()
    if isinstance(quantizer, PostTrainingQuantizer):
        quantizer.calibrate(batches)
    return quantizer, model


@pytest.mark.parametrize("case", list(CASES))
def test_same_fake_quant_outputs_scales_and_gradients_as_pytorch(case):
    cls, cfg, kwargs = CASES[case]
    tq, tmodel = _compress(cls, cfg, kwargs, torch_twin(), [torch.from_numpy(X)])
    kx = X.transpose(0, 2, 3, 1)
    kq, kmodel = _compress(cls, cfg, kwargs, keras_twin(), [kx])
    tmodel.train()
    tx = torch.from_numpy(X)
    tout = tmodel(tx)
    tout.square().sum().backward()
    with tf.GradientTape() as tape:
        kout = kmodel(kx, training=True)
        loss = keras.ops.sum(keras.ops.square(kout))
    grads = tape.gradient(loss, [kmodel.get_layer("conv").kernel.value, kmodel.get_layer("fc").kernel.value])
    np.testing.assert_allclose(np.asarray(kout), tout.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(grads[0]), tmodel.conv.module.weight.grad.numpy().transpose(2, 3, 1, 0),
                               rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(np.asarray(grads[1]), tmodel.fc.module.weight.grad.numpy().T, rtol=1e-3, atol=1e-4)
    tcal, kcal = tq.calibration(), kq.calibration()
    for name in ("conv", "fc"):
        for key, value in tcal[name].items():
            if key.endswith(("_scale", "_zero_point", "_qmin", "_qmax", "_bits")) or key.startswith("tracked"):
                np.testing.assert_allclose(kcal[name][key], value, rtol=1e-4, atol=1e-6, err_msg=f"{name}.{key}")
    np.testing.assert_allclose(kmodel.get_layer("conv").quantized_weight(),
                               tmodel.conv.quantized_weight().numpy().transpose(2, 3, 1, 0), rtol=1e-5, atol=1e-6)
    if case in ("naive", "qat", "ptq-minmax"):
        assert len(kcal["conv"]["weight_scale"]) == 4 and kcal["conv"]["weight_axis"] == 3


def small_cnn() -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten(name="flat")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="fc")(x))


def test_qat_inside_fit_with_the_callback():
    keras.utils.set_random_seed(0)
    model = small_cnn()
    x = RNG.uniform(0, 1, size=(64, 8, 8, 1)).astype(np.float32)
    y = RNG.integers(0, 3, size=64)
    cfg = [{"quant_types": ["weight", "output"], "op_types": ["Conv2D", "Dense"], "quant_start_step": 4}]
    quantizer = QATQuantizer(model, cfg)
    model = quantizer.compress()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[CompressionCallback(quantizer)])
    assert quantizer.steps == 4
    ranges = quantizer.states["fc"].observers["output"].range()
    model.predict(x, verbose=0)  # inference: ranges are not updated
    np.testing.assert_array_equal(quantizer.states["fc"].observers["output"].range()[1], ranges[1])
    out = np.asarray(model(x[:4]))
    params = quantizer.params["fc"]["output"]
    q = out / params.scale[0] + params.zero_point[0]
    np.testing.assert_allclose(q, np.round(q), atol=1e-3)  # on the output grid once quantization started
    kernel = model.get_layer("conv").kernel.numpy()
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[CompressionCallback(quantizer)])
    assert quantizer.steps == 8 and np.isfinite(history.history["loss"][0])
    assert not np.array_equal(model.get_layer("conv").kernel.numpy(), kernel)  # straight-through gradients train


def test_before_quant_start_step_the_model_is_float_and_unwrap_restores():
    model = small_cnn()
    x = RNG.uniform(0, 1, size=(4, 8, 8, 1)).astype(np.float32)
    reference = np.asarray(model(x))
    quantizer = QATQuantizer(model, [{"quant_types": ["weight", "output"], "op_types": ["Dense"],
                                      "quant_start_step": 2}])
    model = quantizer.compress()
    np.testing.assert_allclose(np.asarray(model(x, training=True)), reference, rtol=1e-6)
    quantizer.step()
    quantizer.step()
    assert not np.allclose(np.asarray(model(x)), reference, rtol=1e-6, atol=1e-7)
    quantizer.unwrap_model()
    np.testing.assert_allclose(np.asarray(model(x)), reference, rtol=1e-6)
    assert "call" not in vars(model.get_layer("fc"))


def test_calibration_file_and_the_pytorch_only_exports_refused(tmp_path):
    model = small_cnn()
    ptq = PostTrainingQuantizer(model, [{"quant_types": ["weight", "output"], "op_types": ["Conv2D", "Dense"]}],
                                progress=False)
    ptq.calibrate([RNG.uniform(0, 1, size=(8, 8, 8, 1)).astype(np.float32)])
    calibration = ptq.export_model(tmp_path / "m.weights.h5", calibration_path=tmp_path / "calib.bin")
    assert calibration["conv"]["fused_activation"] == "relu"
    reloaded = small_cnn()
    reloaded.load_weights(tmp_path / "m.weights.h5")  # float weights, not fake-quantized ones
    np.testing.assert_array_equal(reloaded.get_layer("conv").kernel.numpy(), model.get_layer("conv").kernel.numpy())
    assert not np.allclose(reloaded.get_layer("conv").kernel.numpy(), model.get_layer("conv").quantized_weight())
    again = PostTrainingQuantizer(small_cnn(), [{"quant_types": ["weight", "output"], "op_types": ["Dense"]}],
                                  progress=False)
    again.load_calibration(tmp_path / "calib.bin")
    assert again.params["fc"]["output"].scale[0] == pytest.approx(calibration["fc"]["output_scale"])
    with pytest.raises(UnsupportedOpError, match="ONNX"):
        ptq.export_model(tmp_path / "m2.weights.h5", onnx_path=tmp_path / "m.onnx", input_shape=[1, 8, 8, 1])
    with pytest.raises(SlimkitError, match="'xnnpack' is not available for keras models.*PyTorch only"), \
            ptq.emulate_integer():
        pass


def test_subclassed_model_trains_with_qat_in_fit():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3, activation="relu", name="conv")
            self.flat = keras.layers.Flatten()
            self.fc = keras.layers.Dense(3, name="fc")

        def call(self, x, training=None):  # without it, fit calls the model in inference mode (Keras' rule)
            return self.fc(self.flat(self.conv(x)))

    model = Net()
    x = RNG.uniform(0, 1, size=(32, 8, 8, 1)).astype(np.float32)
    model(x[:1])
    quantizer = QATQuantizer(model, [{"quant_types": ["weight", "output"], "op_types": ["Conv2D", "Dense"]}])
    model = quantizer.compress()
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, np.zeros((32, 3), np.float32), batch_size=8, verbose=0, callbacks=[CompressionCallback(quantizer)])
    assert quantizer.steps == 4
    assert set(quantizer.calibration()) == {"conv", "fc"}
    assert quantizer.states["conv"].observers["output"].ready
