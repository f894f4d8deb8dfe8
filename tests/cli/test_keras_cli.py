"""The CLI on a factory returning a keras.Model: weights files, speedup with .npz masks, convert through
export_tflite."""

import numpy as np
import pytest

from slimkit.cli import main
from slimkit.errors import SlimkitError
from slimkit.frameworks.tensorflow.export import run_tflite
from tests.cli.factories import keras_cnn

MODEL = "tests.cli.factories:keras_cnn"
KERAS_DATA = "tests.cli.factories:keras_digits_data"


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


def test_inspect_compare_refuses_a_keras_model_by_name(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("algorithm: PostTrainingQuantizer\ncalibration: {batches: 1}\nconfig_list:\n"
                      "  - quant_types: [weight]\n    op_types: [Dense]\n")
    tflite = tmp_path / "m.tflite"
    tflite.write_bytes(b"x")
    assert main(["inspect", str(tflite), "--compare", "--model", MODEL, "--config", str(config),
                 "--data", KERAS_DATA]) == 2
    err = capsys.readouterr().err
    assert f"The factory {MODEL!r} returned a keras model; this command takes PyTorch models" in err
    assert "`slimkit prune`, `quantize`, `speedup` and `convert` take Keras models" in err


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


# --------------------------------------------------------------------------- prune / quantize on a Keras factory

def _yaml(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


AGP = """\
algorithm: AGPPruner
config_list:
  - final_sparsity: 0.5
    start_epoch: 0
    end_epoch: 1
    frequency: 1
    op_types: [Conv2D, Dense]
fine_tune: {epochs: 2, lr: 0.01, batch_size: 128}
"""


def _fit_like_the_cli(model, compressors, epochs, lr, batch_size=128):
    """What `slimkit prune / quantize` do with `fine_tune:` on a Keras model, written by hand."""
    import keras

    from slimkit.frameworks.tensorflow import CompressionCallback
    from slimkit.frameworks.tensorflow.models import load_digits_arrays

    x_train, y_train, _, _ = load_digits_arrays()
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0,
              callbacks=[CompressionCallback(c) for c in compressors])


@pytest.fixture(scope="module")
def keras_pruned(tmp_path_factory):
    """`slimkit prune` with AGP on the Keras CNN (fine-tuned with fit), and the same run in Python."""
    import keras

    from slimkit.algorithms.pruning import AGPPruner

    tmp_path = tmp_path_factory.mktemp("keras_prune")
    out = tmp_path / "out"
    assert main(["prune", "--config", _yaml(tmp_path, AGP), "--model", MODEL, "--data", KERAS_DATA,
                 "--out", str(out), "--quiet"]) == 0
    model = keras_cnn()
    keras.utils.set_random_seed(0)
    pruner = AGPPruner(model, [{'final_sparsity': 0.5, 'start_epoch': 0, 'end_epoch': 1, 'frequency': 1,
                                'op_types': ['Conv2D', 'Dense']}])
    model = pruner.compress()
    _fit_like_the_cli(model, [pruner], epochs=2, lr=0.01)
    pruner.export_model(model_path=str(tmp_path / "python.weights.h5"))
    return out, pruner, tmp_path / "python.weights.h5"


def test_keras_prune_writes_the_keras_files(keras_pruned):
    out, _, _ = keras_pruned
    assert sorted(p.name for p in out.iterdir()) == ["mask.npz", "model.weights.h5", "report.md"]
    report = (out / "report.md").read_text()
    assert "| conv | (3, 3, 1, 4) | 0.5000 |" in report and "| fc | (4, 10) | 0.5000 |" in report
    assert "eager Keras calls" in report


def test_keras_prune_equals_the_same_run_in_python(keras_pruned):
    import slimkit

    out, pruner, python_weights = keras_pruned
    masks, expected = slimkit.load_masks(out / "mask.npz"), pruner.get_masks()
    assert sorted(masks) == ["conv", "fc"]
    for name in masks:
        np.testing.assert_array_equal(masks[name]["weight"], np.asarray(expected[name]["weight"]))
        assert (masks[name]["weight"] == 0).mean() == 0.5
    cli, python = keras_cnn(), keras_cnn()
    cli.load_weights(out / "model.weights.h5")
    python.load_weights(python_weights)
    for a, b in zip(cli.weights, python.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.allclose(cli.get_layer('fc').kernel.numpy() != 0, keras_cnn().get_layer('fc').kernel.numpy() != 0)


def test_keras_filter_prune_then_speedup_from_the_written_files(tmp_path):
    import keras

    out, small_out = tmp_path / "out", tmp_path / "small"
    config = "algorithm: L1FilterPruner\nconfig_list:\n  - sparsity: 0.5\n    op_types: [Conv2D]\n"
    assert main(["prune", "--config", _yaml(tmp_path, config), "--model", MODEL, "--out", str(out)]) == 0
    assert main(["speedup", "--model", MODEL, "--weights", str(out / "model.weights.h5"), "--masks",
                 str(out / "mask.npz"), "--out", str(small_out)]) == 0
    small = keras.models.load_model(small_out / "model_speedup.keras")
    assert small.get_layer('conv').filters == 2
    masked = keras_cnn()
    masked.load_weights(out / "model.weights.h5")
    np.testing.assert_allclose(np.asarray(small(X)), np.asarray(masked(X)), rtol=1e-5, atol=1e-6)


QAT = """\
algorithm: QATQuantizer
config_list:
  - quant_types: [weight, output]
    op_types: [Conv2D, Dense]
fine_tune: {epochs: 1, lr: 0.001, batch_size: 128}
"""


def test_keras_quantize_qat_equals_the_same_run_in_python(tmp_path):
    """QAT through fit: calibration, float weights and the int8 file equal a hand-written run of the same steps."""
    import json

    import keras

    from slimkit.algorithms.quantization import QATQuantizer
    from slimkit.frameworks.tensorflow import export_tflite
    from slimkit.frameworks.tensorflow.models import load_digits_arrays

    out = tmp_path / "out"
    assert main(["quantize", "--config", _yaml(tmp_path, QAT), "--model", MODEL, "--data", KERAS_DATA,
                 "--tflite", "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["calibration.json", "model.tflite", "model.weights.h5",
                                                     "report.md"]
    x_train, _, x_test, _ = load_digits_arrays()
    model = keras_cnn()
    keras.utils.set_random_seed(0)
    quantizer = QATQuantizer(model, [{'quant_types': ['weight', 'output'], 'op_types': ['Conv2D', 'Dense']}],
                             dummy_input=x_test[:1])
    model = quantizer.compress()
    _fit_like_the_cli(model, [quantizer], epochs=1, lr=0.001)
    expected = json.loads(json.dumps(quantizer.calibration()))
    assert json.loads((out / "calibration.json").read_text()) == expected
    cli = keras_cnn()
    cli.load_weights(out / "model.weights.h5")
    for a, b in zip(cli.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    python_file = tmp_path / "python.tflite"
    export_tflite(model, python_file, quantizer=quantizer, representative_data=[x_test[:1]])
    np.testing.assert_array_equal(run_tflite(out / "model.tflite", x_test[:16]), run_tflite(python_file, x_test[:16]))


PTQ = """\
algorithm: PostTrainingQuantizer
arguments: {algorithm: minmax}
config_list:
  - quant_types: [weight, output]
    op_types: [default]
calibration: {batches: 2}
"""


def test_keras_quantize_ptq_with_masks_writes_the_smaller_model(tmp_path):
    """--masks: ModelSpeedup first (model.keras holds the smaller architecture), whole-graph PTQ on the first two
    training batches (64 each), equal to the same calls in Python."""
    import json

    import keras

    from slimkit.algorithms.quantization import PostTrainingQuantizer
    from slimkit.frameworks.tensorflow.models import load_digits_arrays
    from slimkit.speedup import ModelSpeedup

    out = tmp_path / "out"
    masks = _masks(tmp_path)
    assert main(["quantize", "--config", _yaml(tmp_path, PTQ), "--model", MODEL, "--data", KERAS_DATA,
                 "--masks", str(masks), "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["calibration.json", "model.keras", "report.md"]
    written = keras.models.load_model(out / "model.keras")
    assert written.get_layer('conv').filters == 2
    x_train, _, x_test, _ = load_digits_arrays()
    small = ModelSpeedup(keras_cnn(), x_test[:1], str(masks)).speedup_model()
    ptq = PostTrainingQuantizer(small, [{'quant_types': ['weight', 'output'], 'op_types': ['default']}],
                                algorithm='minmax', dummy_input=x_test[:1])
    ptq.compress()
    ptq.calibrate([x_train[:64], x_train[64:128]])
    assert json.loads((out / "calibration.json").read_text()) == json.loads(json.dumps(ptq.calibration()))
    np.testing.assert_allclose(np.asarray(written(X)), _masked_outputs(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('command, text, message', [
    ('prune', "algorithm: LevelPruner\nconfig_list:\n  - sparsity: 0.5\n    op_names: [conv9]\n", "conv9"),
    ('prune', "algorithm: LevelPruner\nconfig_list:\n  - sparsity: 0.5\n    op_types: [Conv2d]\n", "Conv2d"),
    ('quantize', "algorithm: QATQuantizer\nconfig_list:\n  - quant_types: [weight]\n    op_names: [fc, conv9]\n",
     "conv9"),
])
def test_keras_bad_config_names_the_layer_and_writes_nothing(tmp_path, capsys, command, text, message):
    out = tmp_path / "out"
    assert main([command, "--config", _yaml(tmp_path, text), "--model", MODEL, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "c.yaml:" in err  # the file and line of the entry
    assert not out.exists()


def test_keras_fine_tune_needs_data(tmp_path, capsys):
    assert main(["prune", "--config", _yaml(tmp_path, AGP), "--model", MODEL, "--out", str(tmp_path / "o")]) == 2
    assert "needs data. Expected --data" in capsys.readouterr().err


def test_keras_config_generate_lists_each_layer(tmp_path):
    out = tmp_path / "layers.yaml"
    config = "algorithm: L1FilterPruner\nconfig_list:\n  - sparsity: 0.5\n    op_types: [Conv2D, Dense]\n"
    assert main(["config", "generate", "--config", _yaml(tmp_path, config), "--model", MODEL, "--out", str(out)]) == 0
    text = out.read_text()
    assert "  # conv: Conv2D, weight (3, 3, 1, 4)\n  - op_names: [conv]\n    sparsity: 0.5\n" in text
    assert "  # fc: Dense, weight (4, 10)\n  - op_names: [fc]\n    sparsity: 0.5\n" in text


def test_keras_trainer_given_to_a_pruner_that_requires_one(tmp_path):
    """The trainer the CLI passes to a Keras pruner is one epoch of fit with the pruner's loss: the same masks and
    weights as that fit written by hand."""
    import keras

    import slimkit
    from slimkit.algorithms.pruning import LevelPruner
    from slimkit.frameworks.tensorflow.models import load_digits_arrays

    config = ("algorithm: tests.cli.factories:TrainFirstLevelPruner\nconfig_list:\n  - sparsity: 0.5\n"
              "    op_types: [Dense]\n")
    out = tmp_path / "out"
    assert main(["prune", "--config", _yaml(tmp_path, config), "--model", MODEL, "--data", KERAS_DATA,
                 "--out", str(out)]) == 0
    x_train, y_train, _, _ = load_digits_arrays()
    model = keras_cnn()
    keras.utils.set_random_seed(0)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, batch_size=64, epochs=1, shuffle=False, verbose=0)
    pruner = LevelPruner(model, [{'sparsity': 0.5, 'op_types': ['Dense']}])
    pruner.compress()
    np.testing.assert_array_equal(slimkit.load_masks(out / "mask.npz")["fc"]["weight"],
                                  np.asarray(pruner.get_masks()["fc"]["weight"]))
    cli = keras_cnn()
    cli.load_weights(out / "model.weights.h5")
    np.testing.assert_array_equal(cli.get_layer('conv').kernel.numpy(), model.get_layer('conv').kernel.numpy())
    assert not np.array_equal(cli.get_layer('conv').kernel.numpy(), keras_cnn().get_layer('conv').kernel.numpy())
