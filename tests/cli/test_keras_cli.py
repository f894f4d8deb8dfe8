"""The CLI on a factory returning a keras.Model: weights files, convert through export_tflite."""

import numpy as np
import pytest

from slimkit.cli import main
from slimkit.errors import SlimkitError
from slimkit.frameworks.tensorflow.export import run_tflite
from tests.cli.factories import keras_cnn

MODEL = "tests.cli.factories:keras_cnn"


def test_convert_writes_the_keras_model_with_its_weights(tmp_path):
    trained = keras_cnn()
    trained.get_layer('fc').kernel.assign(np.full((4, 10), 0.25, np.float32))
    weights = tmp_path / "model.weights.h5"
    trained.save_weights(weights)
    out = tmp_path / "model.tflite"
    assert main(["convert", "--model", MODEL, "--weights", str(weights), "--out", str(out)]) == 0
    x = np.random.default_rng(0).standard_normal((4, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(run_tflite(out, x), np.asarray(trained(x)), rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(keras_cnn()(x)), np.asarray(trained(x)))  # the weights file was read


def test_keras_weights_must_be_a_keras_file(tmp_path, capsys):
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"x")
    assert main(["convert", "--model", MODEL, "--weights", str(bad), "--out", str(tmp_path / "m.tflite")]) != 0
    assert "'.weights.h5' or '.keras'" in capsys.readouterr().err
    assert not (tmp_path / "m.tflite").exists()


def test_a_pytorch_model_still_needs_an_input_shape(tmp_path, capsys):
    assert main(["convert", "--model", "tests.cli.factories:digits_model", "--out", str(tmp_path / "m.tflite")]) != 0
    assert "Expected --input-shape" in capsys.readouterr().err


def test_a_factory_returning_no_model_is_refused():
    from slimkit.cli._common import load_model

    with pytest.raises(SlimkitError, match="returned no model"):
        load_model("tests.cli.factories:digits_data")


def test_keras_masks_are_refused_until_keras_speedup(tmp_path, capsys):
    masks = tmp_path / "mask.npz"
    masks.write_bytes(b"")
    out = tmp_path / "m.tflite"
    assert main(["convert", "--model", MODEL, "--masks", str(masks), "--out", str(out)]) != 0
    assert "no Keras ModelSpeedup yet" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize('command', ['prune', 'quantize', 'speedup'])
def test_pytorch_only_commands_refuse_a_keras_model_by_name(tmp_path, capsys, command):
    config = tmp_path / "c.yaml"
    algorithm = "NaiveQuantizer" if command == "quantize" else "LevelPruner"
    config.write_text(f"algorithm: {algorithm}\nconfig_list:\n  - sparsity: 0.5\n    op_types: [Dense]\n")
    extra = {"prune": ["--config", str(config)], "quantize": ["--config", str(config)],
             "speedup": ["--masks", str(config), "--input-shape", "1,8,8,1"]}[command]
    assert main([command, "--model", MODEL, *extra, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"slimkit {command}: error: The factory {MODEL!r} returned a keras model" in err
    assert not (tmp_path / "out").exists()
