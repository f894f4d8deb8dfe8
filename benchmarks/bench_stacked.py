"""Prune, then quantize (PyTorch): the digits CNN with AGP 80 % (unstructured, level rule) and QAT stacked on the
pruner, written as an int8 TFLite file whose weights keep the zeros; beside torch.ao QAT (FX, x86 qconfig)
trained from the same pruned weights (masks baked in; torch.ao has no mask to enforce).

Run: ``PYTHONPATH=. python benchmarks/bench_stacked.py [--json results.json]`` (a few minutes on 2 CPU cores).
Results: ``benchmarks/RESULTS_stacked.md``.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import tempfile
import time

import numpy as np
import torch
from torch import nn

from slimkit.algorithms.pruning import AGPPruner
from slimkit.algorithms.quantization import QATQuantizer
from slimkit.converter import TFLiteConverter
from slimkit.converter.verify import run_tflite
from slimkit.frameworks.torch.adapter import ADAPTER
from slimkit.models import DigitsCNN, load_digits_tensors
from tests.compression.test_composition import int8_weights, tflite_layout

LAYERS = ["conv1", "conv2", "conv3", "fc"]
EPOCHS = {"float": 10, "prune": 8, "qat": 4}   # AGP: 0 -> 0.8 over epochs 0..5 of the pruning phase


def batches(x, y, seed, size=64):
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    for start in range(0, len(x), size):
        index = order[start:start + size]
        yield x[index], y[index]


def train(model, optimizer, data, epochs, first_epoch=0, compressors=()):
    model.train()
    for epoch in range(first_epoch, first_epoch + epochs):
        for compressor in compressors:
            compressor.update_epoch(epoch)
        for xb, yb in batches(data[0], data[1], seed=epoch):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            optimizer.step()
            for compressor in compressors:
                compressor.step()


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean()) * 100


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)


def torch_ao_qat(pruned: nn.Module, masks, data, x_test, y_test) -> dict:
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

    torch.backends.quantized.engine = "x86"
    prepared = prepare_qat_fx(pruned.train(), get_default_qat_qconfig_mapping("x86"), (data[0][:1],))
    start = time.perf_counter()
    train(prepared, sgd(prepared), data, EPOCHS["qat"], first_epoch=EPOCHS["prune"])
    seconds = time.perf_counter() - start
    converted = convert_fx(prepared.eval())
    kept = masked = 0
    for name in LAYERS:
        weight = converted.get_submodule(name).weight().int_repr()
        pruned_here = masks[name]["weight"] == 0
        kept += int((weight[pruned_here] == 0).sum())
        masked += int(pruned_here.sum())
    return {"accuracy": accuracy(converted, x_test, y_test), "masked_zero_in_int8": kept, "masked": masked,
            "train_s": seconds}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = load_digits_tensors()
    data = (x_train, y_train)
    results: dict = {}

    model = DigitsCNN()
    optimizer = sgd(model)
    train(model, optimizer, data, EPOCHS["float"])
    results["float"] = {"accuracy": accuracy(model, x_test, y_test)}

    pruner = AGPPruner(model, [{"final_sparsity": 0.8, "end_epoch": 5, "op_types": ["Conv2d", "Linear"]}],
                       optimizer=optimizer, pruning_algorithm="level")
    model = pruner.compress()
    train(model, optimizer, data, EPOCHS["prune"], compressors=[pruner])
    masks = pruner.get_masks()
    results["pruned_float"] = {"accuracy": accuracy(model, x_test, y_test),
                               "sparsity": {name: float((masks[name]["weight"] == 0).float().mean())
                                            for name in LAYERS}}
    baked = ADAPTER.baked_copy(model, pruner.layers)   # the same pruned weights, plain modules, for torch.ao
    results["torch_ao_qat"] = torch_ao_qat(copy.deepcopy(baked), masks, data, x_test, y_test)

    quantizer = QATQuantizer(model, [{"quant_types": ["input", "weight", "output"], "op_types": ["default"]}],
                             optimizer=optimizer, dummy_input=x_train[:1])
    model = quantizer.compress()
    start = time.perf_counter()
    train(model, optimizer, data, EPOCHS["qat"], first_epoch=EPOCHS["prune"], compressors=[pruner, quantizer])
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad(), quantizer.emulate_integer():   # batch 1, as the file runs
        emulated = torch.cat([model(x) for x in x_test.split(1)])
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "digits_sparse_int8.tflite")
        TFLiteConverter(model, x_train[:1], path).convert()
        litert = np.concatenate([run_tflite(path, [x.permute(0, 2, 3, 1).numpy()])[0] for x in x_test.split(1)])
        weights = int8_weights(path)
        with open(path, "rb") as handle:
            flatbuffer = handle.read()
    kept = masked = zeros = total = 0
    for name, weight in zip(LAYERS, weights):
        pruned_here = tflite_layout(masks[name]["weight"]) == 0
        kept += int(np.sum(weight[pruned_here] == 0))
        masked += int(pruned_here.sum())
        zeros += int(np.sum(weight == 0))
        total += weight.size
    results["slimkit_agp_qat"] = {
        "accuracy_fake_quant": accuracy(model, x_test, y_test),
        "accuracy_litert": float((litert.argmax(1) == y_test.numpy()).mean()) * 100,
        "litert_equals_emulate_integer": bool(np.array_equal(litert, emulated.numpy())),
        "litert_vs_emulate_max_abs": float(np.abs(litert - emulated.numpy()).max()),
        "samples_differing": int(np.any(litert != emulated.numpy(), axis=1).sum()),
        "masked_zero_in_int8": kept, "masked": masked, "int8_weight_zeros": zeros, "int8_weights": total,
        "file_bytes": len(flatbuffer), "gzip_bytes": len(gzip.compress(flatbuffer, 9)), "train_s": seconds,
        "masks_unchanged_by_qat": all(torch.equal(masks[name]["weight"], pruner.get_masks()[name]["weight"])
                                      for name in LAYERS)}
    print(json.dumps(results, indent=1))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)
    return results


if __name__ == "__main__":
    main()
