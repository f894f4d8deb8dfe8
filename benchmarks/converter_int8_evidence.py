"""Evidence behind the int8 figures of the TFLite converter (MobileNetV2 at 224x224).

Called by ``benchmarks/bench_converter.py --int8-evidence`` (writes
benchmarks/results/converter_int8_evidence.json):

- parity variants: BatchNorm statistics left at their defaults (mean 0, var 1) or re-estimated on the
  calibration data; end-to-end share of logits within one output step of the fake-quant model with
  XNNPACK and with TFLite's built-in kernels, and the fake-quant model's own sensitivity (input moved by
  1e-6);
- per-layer kernel parity: every fake-quantized tensor of the interpreter (``experimental_preserve_all_tensors``)
  against the fake-quant model evaluated on the interpreter's own values for that layer's inputs (so one
  kernel at a time), and without that substitution (how the differences accumulate);
- delegation: whether one XNNPACK partition covers the whole graph;
- seed sweep: six initialisations with calibration-data BatchNorm, LiteRT's share beside the fake-quant
  model's own sensitivity;
- per-op latency profile: every op of the float and the int8 file as its own one-op file, timed alone;
- TensorFlow's own converter on ``keras.applications.MobileNetV2(weights=None)``: float vs full int8
  (representative dataset), timed interleaved with slimkit's files under the same interpreter settings.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import torch
from settle import settle_batchnorm

SIZE = 224
SHAPE = (3, SIZE, SIZE)


def _ptq(model, calibration, x):
    """``model`` (eval mode, BatchNorm statistics as they are) PTQ-quantized whole-graph ('tflite' profile,
    minmax) on the ``calibration`` batches; returns it in eval mode, and the quantizer."""
    from slimkit.algorithms.quantization import PostTrainingQuantizer

    config = [{"quant_types": ["input", "weight", "output"], "op_types": ["default"]}]
    ptq = PostTrainingQuantizer(model.eval(), config, algorithm="minmax", dummy_input=x)
    ptq.compress()
    ptq.calibrate(calibration)
    return model.eval(), ptq


def _quantized_mobilenet(bn: str, float_copy: bool = False, seed: int = 0):
    """MobileNetV2 (initialised with ``seed``) PTQ-quantized whole-graph; ``bn``: 'default' keeps the initial BatchNorm
    statistics, 'calibration' re-estimates them on the calibration batches first. Returns (model, x), or
    (model, x, the float model before quantization) with ``float_copy``."""
    import copy

    import slimkit.models as models

    torch.manual_seed(seed)
    model = models.mobilenet_v2()
    calibration = [torch.randn(4, *SHAPE) for _ in range(2)]
    x = torch.randn(1, *SHAPE)
    if bn == "calibration":
        settle_batchnorm(model, calibration)
    model.eval()
    reference = copy.deepcopy(model) if float_copy else None
    _ptq(model, calibration, x)
    return (model, x, reference) if float_copy else (model, x)


def interpreter(path, builtin: bool, threads: int = 1, preserve: bool = False):
    from ai_edge_litert.interpreter import OpResolverType

    from slimkit.utils.tflite_file import tflite_interpreter

    resolver = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if builtin else OpResolverType.AUTO
    return tflite_interpreter(path, num_threads=threads, experimental_op_resolver_type=resolver,
                              experimental_preserve_all_tensors=preserve)


def _convert_recording(model, x, path):
    """Convert ``model`` at ``optimize=1`` (the same int8 kernels as the default level; the RESHAPEs level 2
    folds away stay, so every fake-quantized tensor keeps its name); returns (converter, {fake-quant node
    name: its int8 tensor's name in the file})."""
    from slimkit.converter import TFLiteConverter
    from slimkit.converter.lower import Lowering, target_name
    from slimkit.converter.ops.quantize import FAKE_QUANT
    from slimkit.converter.passes import run_passes
    from slimkit.converter.writer import serialize

    conv = TFLiteConverter(model, x, path, optimize=1)
    captured = conv.capture()
    lowering = Lowering(captured, conv.options)
    with torch.no_grad():
        graph = lowering.run()
    names = {}
    for node in captured.call_nodes():
        value = lowering.values.get(node.name)
        producer = getattr(value, "producer", None)
        if target_name(node) in FAKE_QUANT and producer is not None and producer.code == "DEQUANTIZE":
            names[node.name] = producer.inputs[0].name
    conv.graph = run_passes(graph, conv.options)
    with open(path, "wb") as f:
        f.write(serialize(conv.graph).tobytes())
    return conv, names


def _channels_last(a: np.ndarray) -> np.ndarray:
    return np.moveaxis(a, 1, -1) if a.ndim == 4 else a


def _layer_parity(conv, names, x, interp, local: bool) -> dict:
    """Compare every recorded int8 tensor with the fake-quant model, in steps of that tensor's scale.

    ``local``: each layer's inputs are the interpreter's own (dequantized) values, so a difference is that
    kernel's alone; a mismatch's tie distance is how far the real-valued result was from a rounding tie.
    """
    captured = conv.captured
    details = {d["name"]: d for d in interp.get_tensor_details()}
    values = {n.name: captured.tensor(n) for n in captured.graph.nodes if n.name in captured.state_names}
    values[captured.user_inputs()[0].name] = x

    def resolve(arg):
        if isinstance(arg, torch.fx.Node):
            return values[arg.name]
        if isinstance(arg, (list, tuple)):
            return type(arg)(resolve(a) for a in arg)
        return arg

    layers, elements, mismatched, worst_step, worst_tie, shares = 0, 0, 0, 0, 0.0, []
    with torch.no_grad():
        for node in captured.call_nodes():
            values[node.name] = node.target(*resolve(node.args), **{k: resolve(v) for k, v in node.kwargs.items()})
            detail = details.get(names.get(node.name))
            if detail is None:
                continue
            scale, zero = detail["quantization"]
            got = interp.get_tensor(detail["index"]).astype(np.int64)
            expected = values[node.name].numpy()
            want = (np.round(_channels_last(expected) / scale) + zero).astype(np.int64).reshape(got.shape)
            diff = np.abs(got - want)
            layers += 1
            elements += diff.size
            mismatched += int((diff > 0).sum())
            worst_step = max(worst_step, int(diff.max()))
            shares.append(float((diff <= 1).mean()))
            if local:
                if (diff > 0).any():
                    real = _channels_last(resolve(node.args[0]).numpy()).reshape(got.shape) / scale
                    tie = np.abs(real - np.floor(real) - 0.5)[diff > 0]
                    worst_tie = max(worst_tie, float(tie.max()))
                substitute = (got.astype(np.float32) - zero) * scale
                if substitute.ndim == 4:
                    substitute = np.moveaxis(substitute, -1, 1)
                values[node.name] = torch.from_numpy(np.ascontiguousarray(substitute)).reshape(expected.shape)
    out = {"layers": layers, "elements": elements, "mismatched_elements": mismatched, "max_step_difference":
           worst_step, "min_layer_within_one_step": min(shares)}
    if local:
        out["max_tie_distance_of_mismatches"] = worst_tie
    else:
        out["within_one_step_per_layer"] = shares
    return out


def _output_step(conv) -> float:
    return float(conv.graph.outputs[0].producer.inputs[0].quant.scale[0])


def _forward(model, x, chunk: int = 25) -> np.ndarray:
    """``model(x)`` in chunks of ``chunk`` images (224x224 activations of a whole test set do not fit)."""
    with torch.no_grad():
        return torch.cat([model(part) for part in x.split(chunk)]).numpy()


def _self_share(model, x, expected: np.ndarray, step: float) -> float:
    """Share of the fake-quant model's outputs within one ``step`` of ``expected`` (its outputs on ``x``) with
    its input moved by 1e-6: how sensitive the network is on its own."""
    torch.manual_seed(1)
    moved = _forward(model, x + 1e-6 * torch.randn_like(x))
    return float((np.abs(moved - expected) <= 1.001 * step).mean())


def _litert(path, x, builtin: bool) -> np.ndarray:
    """The file's outputs on every image of ``x`` (NCHW), one invoke per image."""
    interp = interpreter(path, builtin)
    detail, output = interp.get_input_details()[0], interp.get_output_details()[0]
    rows = []
    for image in x.split(1):
        interp.set_tensor(detail["index"], np.moveaxis(image.numpy(), 1, -1).astype(detail["dtype"]))
        interp.invoke()
        rows.append(interp.get_tensor(output["index"]).reshape(1, -1))
    return np.concatenate(rows)


def output_share(conv, model, x, path, builtin: bool) -> dict:
    """Share of the file's logits (LiteRT) within one output step of ``model(x)`` and equal to them, and the logits."""
    step = _output_step(conv)
    expected = _forward(model, x)
    got = _litert(path, x, builtin).reshape(expected.shape)
    return {"within_one_step": float((np.abs(got - expected) <= 1.001 * step).mean()),
            "exact": float((got == expected).mean()), "logits": got}


def _relative_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _parity(model, x, reference, path, label: str) -> dict:
    """End-to-end and per-layer parity of the fake-quant ``model`` converted to ``path`` on the single image
    ``x``; ``reference``: the float model before quantization."""
    conv, names = _convert_recording(model, x, path)
    step = _output_step(conv)
    expected, floating = _forward(model, x), _forward(reference, x)
    out = {"output_step": step, "self_within_one_step_1e-6": _self_share(model, x, expected, step),
           "fake_quant_rel_l2_vs_float": _relative_l2(expected, floating)}
    for kernels, builtin in (("xnnpack", False), ("builtin", True)):
        interp = interpreter(path, builtin, preserve=True)
        detail = interp.get_input_details()[0]
        interp.set_tensor(detail["index"], np.moveaxis(x.numpy(), 1, -1).astype(detail["dtype"]))
        interp.invoke()
        share = output_share(conv, model, x, path, builtin)
        logits = share.pop("logits")
        out[kernels] = {**share, "rel_l2_vs_float": _relative_l2(logits, floating),
                        "rel_l2_vs_fake_quant": _relative_l2(logits, expected),
                        "per_layer_local": _layer_parity(conv, names, x, interp, local=True),
                        "per_layer_accumulated": _layer_parity(conv, names, x, interp, local=False)}
        print(label, kernels, {k: v for k, v in out[kernels].items() if k != "per_layer_accumulated"}, flush=True)
    return out


def parity_variant(bn: str, tmp: str) -> dict:
    """End-to-end and per-layer parity of the MobileNetV2 quantized with BatchNorm statistics ``bn``."""
    model, x, reference = _quantized_mobilenet(bn, float_copy=True)
    return _parity(model, x, reference, os.path.join(tmp, f"mobilenet_v2_{bn}.tflite"), bn)


def seed_sweep(tmp: str, seeds=range(6)) -> list[dict]:
    """Calibration-data BatchNorm, several initialisations: LiteRT (XNNPACK) share of logits within one
    step of the fake-quant model beside the fake-quant model's share against itself with its input moved
    by 1e-6 (how chaotic that network is)."""
    from slimkit.converter import TFLiteConverter

    out = []
    for seed in seeds:
        model, x = _quantized_mobilenet("calibration", seed=seed)
        path = os.path.join(tmp, "seed.tflite")
        conv = TFLiteConverter(model, x, path)
        conv.convert()
        share = output_share(conv, model, x, path, builtin=False)
        self_share = _self_share(model, x, _forward(model, x), _output_step(conv))
        out.append({"seed": seed, "within_one_step": share["within_one_step"], "self_within_one_step_1e-6": self_share})
        print("seed", out[-1], flush=True)
    return out


TRAINED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "mobilenet_v2_digits224.pt")
EPOCHS, BATCH = 2, 32


def _digits224(images: torch.Tensor) -> torch.Tensor:
    """8x8 grey digits (N, 1, 8, 8) upsampled (bilinear) to 224x224 and repeated to 3 channels."""
    return torch.nn.functional.interpolate(images, size=SIZE, mode="bilinear").repeat(1, 3, 1, 1)


def _trained_mobilenet(x_train, y_train) -> tuple[torch.nn.Module, dict]:
    """Standard MobileNetV2 (10 classes) trained on the digits at 224x224: Adam (lr 1e-3), batch 32, ``EPOCHS``
    epochs, seed 0, then BatchNorm statistics re-estimated on 8 training batches. The state dict and the
    training record are cached in ``TRAINED`` (a local, git-ignored file: training takes about 14 minutes on
    2 cores); returns (model in eval mode, training record)."""
    import slimkit.models as models

    torch.manual_seed(0)
    model = models.mobilenet_v2(num_classes=10)
    if os.path.exists(TRAINED):
        cached = torch.load(TRAINED, weights_only=True)
        model.load_state_dict(cached["state_dict"])
        return model.eval(), cached["training"]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start, losses = time.perf_counter(), []
    for _ in range(EPOCHS):
        model.train()
        for batch in torch.randperm(len(y_train)).split(BATCH):
            loss = torch.nn.functional.cross_entropy(model(_digits224(x_train[batch])), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    seconds = time.perf_counter() - start
    settle_batchnorm(model, [_digits224(x_train[i:i + BATCH]) for i in range(0, 8 * BATCH, BATCH)])
    training = {"epochs": EPOCHS, "batch": BATCH, "optimizer": "Adam lr 1e-3", "steps": len(losses),
                "train_images": len(y_train), "seconds": seconds, "threads": torch.get_num_threads(),
                "load_avg_at_end": os.getloadavg(), "first_loss": losses[0], "last_epoch_mean_loss":
                statistics.mean(losses[-len(losses) // EPOCHS:]), "bn": "re-estimated on 256 training images"}
    torch.save({"state_dict": model.state_dict(), "training": training}, TRAINED)
    return model.eval(), training


def trained_variant(tmp: str) -> dict:
    """MobileNetV2 trained on the digits at 224x224 (``_trained_mobilenet``), PTQ-quantized on 32 training
    images, converted at the default level: accuracy of the float model, the fake-quant model and the file
    (XNNPACK, built-in kernels) on the 450 test images, each file's share of logits within one output step of
    the fake-quant model, and the fake-quant model's own sensitivity (input moved by 1e-6); on the first test
    image, the per-layer parity of ``parity_variant``."""
    import copy

    from slimkit.converter import TFLiteConverter
    from slimkit.models import load_digits_tensors

    x_train, y_train, x_test, y_test = load_digits_tensors()
    reference, training = _trained_mobilenet(x_train, y_train)
    x = _digits224(x_test)
    labels = y_test.numpy()
    floating = _forward(reference, x)
    model, quantizer = _ptq(copy.deepcopy(reference), [_digits224(x_train[i:i + 8]) for i in range(0, 32, 8)],
                            x[:1])
    path = os.path.join(tmp, "mobilenet_v2_digits224.tflite")
    conv = TFLiteConverter(model, x[:1], path)
    conv.convert()
    step = _output_step(conv)
    expected = _forward(model, x)
    out = {"training": training, "test_images": len(labels), "output_step": step,
           "accuracy": {"float": float((floating.argmax(1) == labels).mean()),
                        "fake_quant": float((expected.argmax(1) == labels).mean())},
           "self_within_one_step_1e-6": _self_share(model, x, expected, step),
           "fake_quant_rel_l2_vs_float": _relative_l2(expected, floating)}
    for kernels, builtin in (("xnnpack", False), ("builtin", True)):
        got = _litert(path, x, builtin).reshape(expected.shape)
        err = np.abs(got - expected)
        out["accuracy"][f"litert_{kernels}"] = float((got.argmax(1) == labels).mean())
        out[kernels] = {"within_one_step": float((err <= 1.001 * step).mean()), "exact": float((err == 0).mean()),
                        "max_step_difference": int(np.round(err.max() / step)),
                        "same_argmax_as_fake_quant": float((got.argmax(1) == expected.argmax(1)).mean()),
                        "rel_l2_vs_fake_quant": _relative_l2(got, expected)}
    with quantizer.emulate_integer():
        emulated = _forward(model, x)
    got = _litert(path, x, False).reshape(emulated.shape)
    out["xnnpack_vs_emulated"] = {"within_one_step": float((np.abs(got - emulated) <= 1.001 * step).mean()),
                                  "exact": float((got == emulated).mean()),
                                  "accuracy_emulated": float((emulated.argmax(1) == labels).mean())}
    print("trained", out, flush=True)
    out["first_test_image"] = _parity(model, x[:1], reference, os.path.join(tmp, "layers.tflite"), "trained")
    return out


def delegation(path) -> dict:
    """Whether one XNNPACK partition runs the whole file: one DELEGATE node reading no value another op
    produces and writing exactly the model's outputs."""
    interp = interpreter(path, builtin=False, threads=2)
    ops = interp._get_ops_details()
    delegates = [o for o in ops if o["op_name"] == "DELEGATE"]
    produced = {int(t) for o in ops if o["op_name"] != "DELEGATE" for t in o["outputs"]}
    outputs = sorted(d["index"] for d in interp.get_output_details())
    reads_inside = any(int(t) in produced for d in delegates for t in d["inputs"])
    writes = sorted(int(t) for d in delegates for t in d["outputs"])
    codes = [o["op_name"] for o in ops if o["op_name"] != "DELEGATE"]
    return {"ops": len(codes), "delegate_nodes": len(delegates), "delegate_reads_an_op_output": reads_inside,
            "delegate_writes_model_outputs": writes == outputs,
            "fully_delegated": len(delegates) == 1 and not reads_inside and writes == outputs,
            "op_counts": {c: codes.count(c) for c in sorted(set(codes))}}


def time_invokes(interp, repeats: int, invokes: int) -> float:
    """Median over ``repeats`` of the mean seconds of ``invokes`` runs of ``interp``, after 2 warm-up runs."""
    for _ in range(2):
        interp.invoke()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(invokes):
            interp.invoke()
        runs.append((time.perf_counter() - start) / invokes)
    return statistics.median(runs)


def _feed_random(interp, rng) -> None:
    for d in interp.get_input_details():
        if np.issubdtype(d["dtype"], np.integer):
            info = np.iinfo(d["dtype"])
            value = rng.integers(info.min, info.max + 1, d["shape"]).astype(d["dtype"])
        else:
            value = rng.standard_normal(d["shape"]).astype(d["dtype"])
        interp.set_tensor(d["index"], value)


def op_profile(graph, threads: int = 2) -> dict:
    """Each op of ``graph`` written as its own one-op file and timed alone (XNNPACK, ``threads``):
    ``{op code: {"count", "ms"}}`` summed over the ops, plus the total."""
    from ai_edge_litert.interpreter import Interpreter

    from slimkit.converter.ir import Graph
    from slimkit.converter.writer import serialize

    rng = np.random.default_rng(0)
    profile: dict = {}
    for op in graph.ops:
        inputs = [t for t in op.inputs if t is not None and not t.is_const and not t.is_variable]
        single = Graph(ops=[op], inputs=inputs, outputs=list(op.outputs), quant_table=graph.quant_table)
        interp = Interpreter(model_content=serialize(single).tobytes(), num_threads=threads)
        interp.allocate_tensors()
        _feed_random(interp, rng)
        ms = 1e3 * time_invokes(interp, repeats=3, invokes=20)
        del interp
        entry = profile.setdefault(op.code, {"count": 0, "ms": 0.0})
        entry["count"] += 1
        entry["ms"] += ms
    profile["total"] = {"count": len(graph.ops), "ms": sum(v["ms"] for v in profile.values())}
    return profile


def tensorflow_files(tmp: str) -> dict[str, str]:
    """TF's converter on keras MobileNetV2(weights=None): float, and full int8 (8 random calibration
    images, int8 builtins only, float input / output as slimkit's)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(SIZE, SIZE, 3))
    rng = np.random.default_rng(0)

    def representative():
        for _ in range(8):
            yield [rng.uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32)]

    paths = {"tf_float": os.path.join(tmp, "tf_float.tflite"), "tf_int8": os.path.join(tmp, "tf_int8.tflite")}
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    with open(paths["tf_float"], "wb") as f:
        f.write(converter.convert())
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with open(paths["tf_int8"], "wb") as f:
        f.write(converter.convert())
    return paths


def interleaved_latency(files: dict[str, str], threads: int = 2, rounds: int = 5) -> dict:
    """Per file, XNNPACK and built-in kernels: ``rounds`` rounds over all files, each measurement a fresh
    interpreter (median of 3 x 10 invokes; built-in 2 x 3), released before the next (an idle interpreter's
    worker threads keep spinning for a while and slow the next one down); median and minimum over the
    rounds, and the rounds themselves."""
    rng = np.random.default_rng(0)
    feed = rng.standard_normal((1, SIZE, SIZE, 3)).astype(np.float32)
    runs = {name: {"xnnpack": [], "builtin": []} for name in files}
    for _ in range(rounds):
        for name, path in files.items():
            for kernels in ("xnnpack", "builtin"):
                interp = interpreter(path, kernels == "builtin", threads)
                detail = interp.get_input_details()[0]
                interp.set_tensor(detail["index"], feed.astype(detail["dtype"]))
                repeats, invokes = (3, 10) if kernels == "xnnpack" else (2, 3)
                runs[name][kernels].append(1e3 * time_invokes(interp, repeats, invokes))
                del interp
                time.sleep(0.2)
    return {name: {kernels: {"median_ms": statistics.median(v), "min_ms": min(v), "rounds_ms": v}
                   for kernels, v in r.items()} for name, r in runs.items()}


def _ratios(latency: dict, int8: str, float_: str) -> dict:
    return {kernels: {stat: latency[int8][kernels][stat] / latency[float_][kernels][stat]
                      for stat in ("median_ms", "min_ms")} for kernels in ("xnnpack", "builtin")}


def evidence(tmp: str) -> dict:
    """Everything above, for the JSON."""
    import slimkit.models as models
    from slimkit.converter import TFLiteConverter

    out = {"parity": {bn: parity_variant(bn, tmp) for bn in ("default", "calibration")},
           "seed_sweep_calibration_bn": seed_sweep(tmp), "trained_digits224": trained_variant(tmp)}
    model, x = _quantized_mobilenet("calibration")
    files = {"slimkit_float": os.path.join(tmp, "float.tflite"), "slimkit_int8": os.path.join(tmp, "int8.tflite")}
    int8 = TFLiteConverter(model, x, files["slimkit_int8"])
    int8.convert()
    torch.manual_seed(0)
    fp = TFLiteConverter(models.mobilenet_v2().eval(), x, files["slimkit_float"])
    fp.convert()
    files.update(tensorflow_files(tmp))
    out["delegation"] = {name: delegation(path) for name, path in files.items()}
    print("delegation", out["delegation"], flush=True)
    out["op_profile_ms"] = {"slimkit_float": op_profile(fp.graph), "slimkit_int8": op_profile(int8.graph)}
    print("profile", out["op_profile_ms"], flush=True)
    out["file_mb"] = {name: os.path.getsize(path) / 2**20 for name, path in files.items()}
    latency = interleaved_latency(files)
    out["latency_2_threads"] = latency
    out["int8_over_float"] = {"slimkit": _ratios(latency, "slimkit_int8", "slimkit_float"),
                              "tensorflow": _ratios(latency, "tf_int8", "tf_float")}
    print("ratios", out["int8_over_float"], flush=True)
    return out
