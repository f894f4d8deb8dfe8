"""The CLI on a factory returning a keras.Model: weights files, speedup with .npz masks, convert through
export_tflite."""

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


KEEP = np.array([1.0, 0.0, 1.0, 0.0], np.float32)  # conv filters 1 and 3 pruned


def _masks(tmp_path, layer='conv'):
    """The .npz a Keras pruner's export writes (save_masks), pruning filters 1 and 3 of ``layer``."""
    from slimkit.frameworks.tensorflow.export import save_masks

    path = tmp_path / "mask.npz"
    save_masks({layer: {'weight': np.ones((3, 3, 1, 4), np.float32) * KEEP, 'bias': KEEP}}, path)
    return path


def _masked_outputs(x):
    model = keras_cnn()
    conv = model.get_layer('conv')
    conv.kernel.assign(conv.kernel.numpy() * KEEP)
    conv.bias.assign(conv.bias.numpy() * KEEP)
    return np.asarray(model(x))


X = np.random.default_rng(1).standard_normal((5, 8, 8, 1)).astype(np.float32)


def test_speedup_writes_the_smaller_keras_model(tmp_path, capsys):
    import keras

    out = tmp_path / "out"
    assert main(["speedup", "--model", MODEL, "--masks", str(_masks(tmp_path)), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model_speedup.keras", "report.md"]
    small = keras.models.load_model(out / "model_speedup.keras")
    assert small.get_layer('conv').filters == 2 and tuple(small.get_layer('fc').kernel.shape) == (2, 10)
    np.testing.assert_allclose(np.asarray(small(X)), _masked_outputs(X), rtol=1e-6, atol=1e-6)
    # conv 3*3*1*4+4 = 40 -> 20, fc 4*10+10 = 50 -> 30
    assert "parameters 90 -> 50;" in capsys.readouterr().out
    assert "params 90 -> 50" in (out / "report.md").read_text()


def test_speedup_reads_keras_weights_and_an_input_shape(tmp_path):
    import keras

    trained = keras_cnn()
    trained.get_layer('fc').kernel.assign(np.full((4, 10), 0.25, np.float32))
    weights = tmp_path / "model.weights.h5"
    trained.save_weights(weights)
    out = tmp_path / "out"
    assert main(["speedup", "--model", MODEL, "--weights", str(weights), "--masks", str(_masks(tmp_path)),
                 "--input-shape", "2,8,8,1", "--out", str(out)]) == 0
    small = keras.models.load_model(out / "model_speedup.keras")
    np.testing.assert_array_equal(small.get_layer('fc').kernel.numpy(), np.full((2, 10), 0.25, np.float32))


def test_convert_with_keras_masks_writes_the_smaller_model(tmp_path):
    out = tmp_path / "m.tflite"
    assert main(["convert", "--model", MODEL, "--masks", str(_masks(tmp_path)), "--out", str(out)]) == 0
    np.testing.assert_allclose(run_tflite(out, X), _masked_outputs(X), rtol=1e-5, atol=1e-5)
    from ai_edge_litert.interpreter import Interpreter

    shapes = {tuple(d['shape']) for d in Interpreter(model_path=str(out)).get_tensor_details()}
    assert (2, 3, 3, 1) in shapes and (4, 3, 3, 1) not in shapes  # two filters left in the file


@pytest.mark.parametrize('extra, message', [
    (["--onnx"], "slimkit writes ONNX for PyTorch models only"),
    (["--input-shape", "1,9,9,1"], "--input-shape does not fit the Keras model's inputs [(None, 8, 8, 1)]"),
    (["--input-shape", "1,8,8"], "Received: --input-shape '1,8,8'"),
])
def test_keras_speedup_bad_arguments_write_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert main(["speedup", "--model", MODEL, "--masks", str(_masks(tmp_path)), *extra, "--out", str(out)]) != 0
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize('command', ['speedup', 'convert'])
def test_keras_masks_of_an_unknown_layer_write_nothing(tmp_path, capsys, command):
    out = tmp_path / ("out" if command == "speedup" else "m.tflite")
    assert main([command, "--model", MODEL, "--masks", str(_masks(tmp_path, 'conv9')), "--out", str(out)]) != 0
    assert "conv9" in capsys.readouterr().err
    assert not out.exists()


def test_pytorch_speedup_still_needs_an_input_shape(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["speedup", "--model", "tests.cli.factories:digits_model", "--masks", str(_masks(tmp_path)),
                 "--out", str(out)]) != 0
    assert "Expected --input-shape" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize('command', ['prune', 'quantize'])
def test_pytorch_only_commands_refuse_a_keras_model_by_name(tmp_path, capsys, command):
    config = tmp_path / "c.yaml"
    algorithm = "NaiveQuantizer" if command == "quantize" else "LevelPruner"
    config.write_text(f"algorithm: {algorithm}\nconfig_list:\n  - sparsity: 0.5\n    op_types: [Dense]\n")
    assert main([command, "--model", MODEL, "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"slimkit {command}: error: The factory {MODEL!r} returned a keras model" in err
    assert "`slimkit speedup` and `slimkit convert` take Keras models" in err
    assert not (tmp_path / "out").exists()


def test_speedup_of_a_keras_pruner_export(tmp_path):
    """The files a Keras L1FilterPruner's export_model writes (weights with masks baked in, mask.npz) into
    `slimkit speedup`: the smaller model gives the pruned model's outputs."""
    import keras

    from slimkit.algorithms.pruning import L1FilterPruner

    pruner = L1FilterPruner(keras_cnn(), [{'sparsity': 0.5, 'op_types': ['Conv2D']}])
    pruned = pruner.compress()
    expected = np.asarray(pruned(X))
    weights, masks = tmp_path / "pruned.weights.h5", tmp_path / "mask.npz"
    pruner.export_model(model_path=str(weights), mask_path=str(masks))
    out = tmp_path / "out"
    assert main(["speedup", "--model", MODEL, "--weights", str(weights), "--masks", str(masks),
                 "--out", str(out)]) == 0
    small = keras.models.load_model(out / "model_speedup.keras")
    assert small.get_layer('conv').filters == 2
    np.testing.assert_allclose(np.asarray(small(X)), expected, rtol=1e-6, atol=1e-6)


def test_convert_refuses_an_input_shape_the_keras_model_does_not_take(tmp_path, capsys):
    out = tmp_path / "m.tflite"
    assert main(["convert", "--model", MODEL, "--input-shape", "1,1,8,8", "--out", str(out)]) != 0
    assert "Received: --input-shape '1,1,8,8'" in capsys.readouterr().err
    assert not out.exists()
