"""Compression reports: per-layer sparsity, parameter count, file size and latency, before and after.

:func:`measure` takes the numbers for one PyTorch or Keras model; :func:`render_report` turns a before /
after pair and the masks into Markdown; :func:`write_report` writes it atomically.

Example:

>>> import torch
>>> from slimkit.analysis.report import measure, layer_sparsity, render_report
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 2, bias=False))
>>> before = measure(model, input_shape=[1, 4], runs=2)
>>> with torch.no_grad():
...     _ = model[0].weight[0].zero_()
>>> after = measure(model, input_shape=[1, 4], runs=2)
>>> before.parameters, before.nonzero, after.nonzero
(8, 8, 4)
>>> layers = layer_sparsity({'0': {'weight': torch.tensor([[0.0] * 4, [1.0] * 4]), 'bias': None}})
>>> layers['0']
((2, 4), 0.5)
>>> print(render_report("demo", before, after, layers).splitlines()[0])
# Compression report: demo
"""

from __future__ import annotations

import io
import os
import statistics
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slimkit.utils.files import atomic_path


@dataclass(frozen=True)
class ModelStats:
    """Numbers for one model.

    Attributes:
        parameters: number of parameters.
        nonzero: number of parameters that are not zero.
        file_bytes: size of the saved weights: the state dict (``torch.save``), a Keras model's ``.weights.h5``.
        compressed_bytes: that file zlib-compressed (zeros compress; this is what pruning saves on disk).
        latency_ms: median latency of a batch-1 forward in milliseconds (one torch thread; Keras: eager calls with
            TensorFlow's thread settings), or None if not measured.
        metric: an evaluation metric (accuracy), or None.
    """

    parameters: int
    nonzero: int
    file_bytes: int
    compressed_bytes: int
    latency_ms: float | None = None
    metric: float | None = None


def _median_ms(call: Callable[[], Any], runs: int, warmup: int) -> float:
    """Median wall-clock time of ``call()`` in milliseconds over ``runs`` timed calls after ``warmup`` untimed."""
    times = []
    for index in range(warmup + runs):
        start = time.perf_counter()
        call()
        if index >= warmup:
            times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def latency_ms(model: Any, example: Any, runs: int = 10, warmup: int = 3, threads: int | None = 1) -> float:
    """Median wall-clock time of ``model(example)`` in milliseconds (eval mode, no grad).

    Args:
        model: a PyTorch module.
        example: its input (batch 1 for deployment latency).
        runs: timed runs; the median is returned.
        warmup: untimed runs first.
        threads: intra-op threads while timing (restored afterwards); 1 by default, as on-device
            benchmarks usually run, and because multi-threaded timings of small models on a busy
            machine are mostly scheduler noise. None keeps the current setting.
    """
    import torch

    was_training = model.training
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    model.eval()
    try:
        with torch.no_grad():
            return _median_ms(lambda: model(example), runs, warmup)
    finally:
        model.train(was_training)
        torch.set_num_threads(previous_threads)


def _torch_stats(model: Any, input_shape: Sequence[int] | None, example: Any, metric: float | None,
                 runs: int) -> ModelStats:
    import torch

    params = list(model.parameters())
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    data = buffer.getvalue()
    if example is None and input_shape is not None:
        parameter = params[0] if params else None
        example = torch.randn(*input_shape, device=parameter.device if parameter is not None else "cpu")
    return ModelStats(
        parameters=sum(p.numel() for p in params),
        nonzero=sum(int(torch.count_nonzero(p.detach())) for p in params),
        file_bytes=len(data),
        compressed_bytes=len(zlib.compress(data, 6)),
        latency_ms=latency_ms(model, example, runs=runs) if example is not None else None,
        metric=metric,
    )


def _keras_stats(model: Any, input_shape: Sequence[int] | None, example: Any, metric: float | None,
                 runs: int) -> ModelStats:
    """Every weight of the model (``count_params``: trainable and not), its ``.weights.h5`` file, eager
    ``model(example, training=False)`` latency."""
    import tempfile

    import numpy as np

    from slimkit.frameworks.tensorflow.export import save_model

    values = [np.asarray(weight.numpy()) for weight in model.weights]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.weights.h5")
        save_model(model, path)  # what `slimkit prune` writes: no optimizer state, masks baked in
        with open(path, "rb") as handle:
            data = handle.read()
    if example is None and input_shape is not None:
        example = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
    return ModelStats(
        parameters=sum(value.size for value in values),
        nonzero=sum(int(np.count_nonzero(value)) for value in values),
        file_bytes=len(data),
        compressed_bytes=len(zlib.compress(data, 6)),
        latency_ms=(_median_ms(lambda: model(example, training=False), runs, 3) if example is not None else None),
        metric=metric,
    )


# framework (slimkit.compression.adapter.framework_of) -> its models' numbers
_STATS: dict[str, Callable[..., ModelStats]] = {"torch": _torch_stats, "keras": _keras_stats}


def measure(model: Any, input_shape: Sequence[int] | None = None, example: Any = None, metric: float | None = None,
            runs: int = 10) -> ModelStats:
    """Parameters, non-zeros, file sizes and (with ``input_shape`` or ``example``) batch-1 latency of ``model``,
    a PyTorch module (parameters, ``torch.save`` of the state dict) or a Keras model (every weight, the
    ``.weights.h5`` file, eager calls)."""
    from slimkit.compression.adapter import framework_of

    return _STATS[framework_of(model)](model, input_shape, example, metric, runs)


def layer_sparsity(masks: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[tuple[int, ...], float]]:
    """``{layer: (weight shape, fraction of the weight mask that is zero)}``."""
    import numpy as np

    result = {}
    for name, entry in masks.items():
        mask = entry["weight"]
        array = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
        result[name] = (tuple(array.shape), float((array == 0).sum()) / max(array.size, 1))
    return result


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _change(before: float, after: float) -> str:
    return f"{(after - before) / before * 100:+.1f}%" if before else "n/a"


def render_report(title: str, before: ModelStats, after: ModelStats,
                  layers: Mapping[str, tuple[tuple[int, ...], float]] | None = None, notes: Sequence[str] = (),
                  layer_table: tuple[Sequence[str], Sequence[Sequence[str]]] | None = None) -> str:
    """The Markdown report comparing ``before`` and ``after``.

    Args:
        title: the model's name.
        before: stats of the original model.
        after: stats of the compressed model.
        layers: ``{layer: (weight shape, sparsity)}`` for the pruning table (see :func:`layer_sparsity`).
        notes: extra lines listed under "Notes".
        layer_table: ``(header, rows)`` of another per-layer table (quantization parameters) instead.
    """
    rows = [
        ("parameters", f"{before.parameters:,}", f"{after.parameters:,}", _change(before.parameters, after.parameters)),
        ("non-zero parameters", f"{before.nonzero:,}", f"{after.nonzero:,}", _change(before.nonzero, after.nonzero)),
        ("file size", _size(before.file_bytes), _size(after.file_bytes), _change(before.file_bytes, after.file_bytes)),
        ("file size (zlib)", _size(before.compressed_bytes), _size(after.compressed_bytes),
         _change(before.compressed_bytes, after.compressed_bytes)),
    ]
    if before.latency_ms is not None and after.latency_ms is not None:
        rows.append(("latency, batch 1, 1 thread (median)", f"{before.latency_ms:.3f} ms", f"{after.latency_ms:.3f} ms",
                     _change(before.latency_ms, after.latency_ms)))
    if before.metric is not None and after.metric is not None:
        rows.append(("accuracy", f"{before.metric:.4f}", f"{after.metric:.4f}", f"{after.metric - before.metric:+.4f}"))
    lines = [f"# Compression report: {title}", "", "| | before | after | change |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {b} | {a} | {c} |" for name, b, a, c in rows]
    if layers is not None:
        layer_table = (["layer", "weight shape", "sparsity"],
                       [[name, str(tuple(shape)), f"{sparsity:.4f}"] for name, (shape, sparsity) in layers.items()])
    if layer_table is not None:
        header, rows = layer_table
        lines += ["", "## Layers", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def write_report(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
