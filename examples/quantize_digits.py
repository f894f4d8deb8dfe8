"""Quantize a small CNN on the bundled 8x8 digits: float vs PTQ (minmax, l2, kl) vs QAT vs DoReFa 4-bit vs BNN.

Run: ``python examples/quantize_digits.py`` (about two minutes on two CPU cores). Prints a table of
test accuracy and model size (weights at their quantized bit width, biases at 32 bits, BatchNorm
folded into the convolutions where the quantizer folds it), then exports the float and the QAT int8 model
to .tflite (in a temporary folder, removed afterwards) and checks both in LiteRT: error against PyTorch and
test accuracy.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time

import numpy as np
import torch
from torch import nn

from slimkit.algorithms.quantization import (
    BNNQuantizer,
    DoReFaQuantizer,
    PostTrainingQuantizer,
    QATQuantizer,
)
from slimkit.converter import TFLiteConverter, verify
from slimkit.models import DigitsCNN, load_digits_tensors

torch.set_num_threads(1)  # the shared 2-core machine: one thread is faster under load
WHOLE_GRAPH = [{"quant_types": ["weight", "output"], "op_types": ["default"]}]


def batches(x, y, size=64, shuffle=True, seed=0):
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(len(x))
    for start in range(0, len(x), size):
        index = order[start:start + size]
        yield x[index], y[index]


def train(model, data, epochs, lr, quantizer=None, seed=0):
    x_train, y_train = data[0], data[1]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    model.train()
    for epoch in range(epochs):
        for xb, yb in batches(x_train, y_train, seed=seed + epoch):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            optimizer.step()
            if quantizer is not None:
                quantizer.step()
        scheduler.step()
    return model


@torch.no_grad()
def accuracy(model, data):
    model.eval()
    x_test, y_test = data[2], data[3]
    return (model(x_test).argmax(1) == y_test).float().mean().item() * 100


def model_size(model, quantizer=None):
    """Bytes of the deployed weights: quantized weights at their bit width, the rest at 32 bits; a
    BatchNorm folded into its conv costs nothing but the conv's bias."""
    calibration = quantizer.calibration() if quantizer is not None else {}
    folded = {entry.get("folded_bn"): name for name, entry in calibration.items() if isinstance(entry, dict)
              and entry.get("folded_bn")}
    bits = 0
    for name, parameter in model.named_parameters():
        owner, _, kind = name.rpartition(".")
        owner = owner.removesuffix(".module")
        if owner in folded:
            continue
        bits += parameter.numel() * calibration.get(owner, {}).get("weight_bits" if kind == "weight" else "_", 32)
    for bn, conv in folded.items():
        module = model.get_submodule(conv)
        if getattr(module, "module", module).bias is None:
            bits += model.get_submodule(bn).num_features * 32
    return bits / 8


def litert_accuracy(path, data):
    """Test accuracy of a .tflite file in the LiteRT interpreter (inputs channels-last, as the converter writes)."""
    from slimkit.converter.verify import run_tflite

    x_test, y_test = data[2], data[3]
    logits = [run_tflite(path, [image.permute(0, 2, 3, 1).numpy()])[0] for image in x_test.split(1)]
    return float((torch.from_numpy(np.concatenate(logits)).argmax(1) == y_test).float().mean()) * 100


def export_tflite(float_model, qat_model, data, verbose=True):
    """The float model and the QAT int8 model as .tflite files (slimkit's converter, no TensorFlow), each checked
    in LiteRT: max error against PyTorch on the test images (the int8 file against the QAT model evaluated with
    the int8 kernels' arithmetic, ``emulate_integer``) and test accuracy."""
    x_test = data[2]
    rows = []
    with tempfile.TemporaryDirectory(prefix="slimkit_digits_") as out_dir:
        for name, model in (("float32", float_model.eval()), ("QAT int8", qat_model.eval())):
            path = os.path.join(out_dir, f"digits_{name.split()[-1]}.tflite")
            TFLiteConverter(model, x_test[:1], path).convert()
            error = verify(model, x_test[:1], path, batches=x_test[1:50].split(1), draws=0).max_abs_error
            rows.append((name, os.path.basename(path), os.path.getsize(path), error, litert_accuracy(path, data)))
    if verbose:
        print(f"\n{'TFLite file':<22} {'size':>9}  {'max |LiteRT - PyTorch|':>22}  {'LiteRT accuracy':>15}")
        for _, path, size, error, acc in rows:
            print(f"{path:<22} {size / 1024:6.1f} KiB  {error:22.2e}  {acc:14.1f}%")
        print(f"(the int8 file against the QAT model under qat.emulate_integer(): "
              f"{'bit-exact' if rows[1][3] == 0 else 'NOT exact'}; {rows[0][2] / rows[1][2]:.1f}x smaller)\n")
    return rows


def run(epochs=10, qat_epochs=3, verbose=True):
    torch.manual_seed(0)
    data = load_digits_tensors()
    x_train = data[0]
    dummy = x_train[:2]
    calib = [x_train[i:i + 64] for i in range(0, 512, 64)]
    results = []

    def report(name, model, quantizer=None, seconds=0.0):
        row = {"method": name, "accuracy": accuracy(model, data), "size_bytes": model_size(model, quantizer),
               "seconds": seconds}
        results.append(row)
        if verbose:
            print(f"{name:<22} {row['accuracy']:7.1f}%  {row['size_bytes'] / 1024:7.1f} KiB  {seconds:6.2f} s",
                  flush=True)

    start = time.perf_counter()
    float_model = train(DigitsCNN(), data, epochs, 1e-2)
    report("float32", float_model, seconds=time.perf_counter() - start)

    for algorithm in ("minmax", "l2", "kl"):
        start = time.perf_counter()
        model = copy.deepcopy(float_model).eval()
        ptq = PostTrainingQuantizer(model, WHOLE_GRAPH, algorithm=algorithm, dummy_input=dummy, progress=False)
        model = ptq.compress()
        ptq.calibrate(calib)
        report(f"PTQ int8 ({algorithm})", model, ptq, time.perf_counter() - start)

    start = time.perf_counter()
    model = copy.deepcopy(float_model)
    qat = QATQuantizer(model, WHOLE_GRAPH, dummy_input=dummy)
    model = qat.compress()
    train(model, data, qat_epochs, 1e-3, qat, seed=100)
    report("QAT int8", model, qat, time.perf_counter() - start)

    export_tflite(float_model, model, data, verbose)

    start = time.perf_counter()
    model = copy.deepcopy(float_model)
    dorefa = DoReFaQuantizer(model, [{"quant_types": ["weight"], "quant_bits": 4, "op_types": ["Conv2d", "Linear"]}])
    model = dorefa.compress()
    train(model, data, qat_epochs, 1e-3, seed=200)
    report("DoReFa w4", model, dorefa, time.perf_counter() - start)

    start = time.perf_counter()
    model = copy.deepcopy(float_model)
    # BNN: binarize the inner layers (weights and activations); the first conv and the classifier stay 8-bit
    bnn = BNNQuantizer(model, [{"quant_types": ["weight", "output"], "op_names": ["conv2", "conv3"]}])
    model = bnn.compress()
    train(model, data, epochs, 3e-3, seed=300)
    report("BNN (conv2, conv3)", model, bnn, time.perf_counter() - start)
    return results


if __name__ == "__main__":
    print(f"{'method':<22} {'accuracy':>8}  {'size':>11}  {'time':>8}")
    run()
