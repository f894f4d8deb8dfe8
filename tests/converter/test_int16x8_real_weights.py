"""The ``'tflite_int16x8'`` file of a real pretrained model (digit-recognizer-py's MNIST CNN, installed with
``--no-deps`` by the Makefile) equals ``emulate_integer()`` on every output of several batches of digits."""

from __future__ import annotations

import numpy as np
import torch
from ai_edge_litert.interpreter import OpResolverType

from slimkit.algorithms.quantization import PostTrainingQuantizer
from slimkit.converter import TFLiteConverter
from slimkit.models.mnist_cnn import load_pretrained_mnist_cnn, mnist_digits
from slimkit.utils.litert import interpreter
from tests.converter.test_int16x8 import PROFILE, WHOLE_GRAPH, assert_16x8_file


def test_pretrained_digits_cnn_file_equals_emulation_on_every_output(tmp_path):
    model = load_pretrained_mnist_cnn()
    calibration, _ = mnist_digits(64)
    evaluation, labels = mnist_digits(48, offset=64)
    with torch.no_grad():
        float_accuracy = float((model(evaluation).argmax(1) == labels).float().mean())
    quantizer = PostTrainingQuantizer(model, WHOLE_GRAPH, algorithm="minmax", dummy_input=calibration[:1],
                                      profile=PROFILE, progress=False)
    quantizer.compress()
    quantizer.calibrate(list(calibration.split(32)))
    path = tmp_path / "mnist_cnn16.tflite"
    TFLiteConverter(model, calibration[:16], path).convert()  # batches of 16
    assert assert_16x8_file(path) == ["QUANTIZE"] + ["CONV_2D", "MAX_POOL_2D"] * 3 + ["RESHAPE", "FULLY_CONNECTED",
                                                                                  "FULLY_CONNECTED", "DEQUANTIZE"]
    runner = interpreter(model_path=str(path),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    index = runner.get_input_details()[0]["index"]
    predictions = []
    for batch in evaluation.split(16):  # three batches of 16 digits
        runner.set_tensor(index, batch.permute(0, 2, 3, 1).numpy())
        runner.invoke()
        got = runner.get_tensor(runner.get_output_details()[0]["index"])
        with torch.no_grad(), quantizer.emulate_integer():
            expected = model(batch).numpy()
        np.testing.assert_array_equal(got, expected)
        predictions.append(expected.argmax(1))
    accuracy = float((torch.from_numpy(np.concatenate(predictions)) == labels).float().mean())
    assert float_accuracy == 42 / 48 and accuracy == float_accuracy  # the real weights (random ones: about 0.1)
