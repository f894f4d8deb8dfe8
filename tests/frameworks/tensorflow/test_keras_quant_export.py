"""``export_tflite(model, path, quantizer=q)``: an int8 file with the quantizer's ranges, run in LiteRT."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from slimkit.algorithms.quantization import DoReFaQuantizer, PostTrainingQuantizer, QATQuantizer
from slimkit.errors import CompressionStateError, UnsupportedOpError
from slimkit.frameworks.tensorflow import CompressionCallback, export_tflite, run_tflite
from slimkit.frameworks.tensorflow.models import compile_classifier, load_digits_arrays

RNG = np.random.default_rng(1)


def small_cnn() -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, activation="relu", name="dw")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="fc")(x))


CONFIG = [{"quant_types": ["input", "weight", "output"], "op_names": ["conv"]},
          {"quant_types": ["weight", "output"], "op_names": ["dw", "fc"]}]


def tensor_scales(flatbuffer: bytes) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    return {t["name"]: np.asarray(t["quantization_parameters"]["scales"]) for t in interpreter.get_tensor_details()}


@pytest.mark.parametrize("algorithm", ["minmax", "kl"])
def test_int8_file_matches_the_fake_quant_model_within_one_step(tmp_path, algorithm):
    keras.utils.set_random_seed(0)
    model = small_cnn()
    x = RNG.uniform(0, 1, size=(96, 8, 8, 1)).astype(np.float32)
    ptq = PostTrainingQuantizer(model, CONFIG, algorithm=algorithm, progress=False)
    ptq.calibrate([x[:48], x[48:64]])
    reference = np.asarray(model(x, training=False))
    flatbuffer = export_tflite(model, tmp_path / "m.tflite", quantizer=ptq)
    assert (tmp_path / "m.tflite").read_bytes() == flatbuffer
    out = run_tflite(flatbuffer, x)
    step = ptq.params["fc"]["output"].scale[0]
    within = np.abs(out - reference) <= step * (1 + 1e-4)
    assert within.mean() >= 0.99, f"{within.mean():.4f} of elements within one step"
    scales = tensor_scales(flatbuffer)
    for name in ("conv", "dw"):  # int8 activations carry exactly the quantizer's output scales
        expected = ptq.params[name]["output"].scale[0]
        assert any(s.size == 1 and np.isclose(s[0], expected, rtol=1e-6) for s in scales.values()), name
    for name in ("conv", "dw"):  # per-channel weight scales: max|w_c| / 127, as the quantizer's
        expected = ptq.params[name]["weight"].scale
        assert any(s.shape == expected.shape and np.allclose(s, expected, rtol=1e-6) for s in scales.values()), name
    # the Keras model is unchanged by the export (float weights, still fake-quantizing)
    np.testing.assert_array_equal(np.asarray(model(x, training=False)), reference)


def digits_model(width: int = 16) -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Conv2D(width * 2, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="fc")(x))


def test_qat_on_digits_int8_accuracy_within_half_a_point(tmp_path):
    x_train, y_train, x_test, y_test = load_digits_arrays()
    keras.utils.set_random_seed(0)
    model = compile_classifier(digits_model())
    model.fit(x_train, y_train, epochs=15, batch_size=32, verbose=0)
    config = [{"quant_types": ["input", "weight", "output"], "op_names": ["conv1"]},
              {"quant_types": ["weight", "output"], "op_names": ["conv2", "fc"]},
              {"quant_types": ["output"], "op_names": ["gap"]}]
    qat = QATQuantizer(model, config)
    model = qat.compress()
    model.fit(x_train, y_train, epochs=2, batch_size=64, verbose=0, callbacks=[CompressionCallback(qat)])
    keras_accuracy = float(np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test))
    flatbuffer = export_tflite(model, tmp_path / "digits_int8.tflite", quantizer=qat)
    tflite_accuracy = float(np.mean(np.argmax(run_tflite(flatbuffer, x_test), -1) == y_test))
    assert keras_accuracy > 0.9, keras_accuracy
    assert abs(tflite_accuracy - keras_accuracy) <= 0.005, (keras_accuracy, tflite_accuracy)


def test_export_refuses_what_int8_cannot_hold(tmp_path):
    model = small_cnn()
    dorefa = DoReFaQuantizer(model, [{"quant_types": ["weight"], "quant_bits": 4, "op_names": ["conv"]}])
    dorefa.compress()
    model(np.zeros((1, 8, 8, 1), np.float32))
    with pytest.raises(UnsupportedOpError, match="8-bit"):
        export_tflite(model, tmp_path / "d.tflite", quantizer=dorefa)
    assert not (tmp_path / "d.tflite").exists()
    dorefa.unwrap_model()
    fresh = PostTrainingQuantizer(model, CONFIG, progress=False)
    fresh.compress()
    with pytest.raises(CompressionStateError, match="no input range"):
        export_tflite(model, tmp_path / "p.tflite", quantizer=fresh)
