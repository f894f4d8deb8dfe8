"""PostTrainingQuantizer: calibrate activation ranges on sample batches (min-max, L2, KL)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from slimkit.algorithms.quantization.data_free import bn_output_ranges, data_free_gaps
from slimkit.algorithms.quantization.techniques import TechniqueReport, resolve_techniques
from slimkit.compression import Layer, Quantizer
from slimkit.compression.observers import HistogramObserver, MinMaxObserver, Observer
from slimkit.errors import ConfigError, SlimkitError
from slimkit.utils.progress import progress

ALGORITHMS = ("minmax", "l2", "kl")


class PostTrainingQuantizer(Quantizer):
    """Post-training quantization: weights per-channel from their max |w|, activation ranges from
    calibration batches, chosen by ``algorithm``:

    - ``'minmax'``: the observed minimum and maximum,
    - ``'l2'``: the clipping threshold minimising the expected squared quantization error over the
      activation histogram,
    - ``'kl'``: the threshold minimising the KL divergence between the histogram and its quantized
      version (TensorRT's entropy calibration, as in TinyNN).

    BatchNorm is folded into the preceding conv and conv+BN+ReLU quantized as one kernel when
    ``dummy_input`` is given.

    Args:
        model: a ``torch.nn.Module``.
        config_list: dicts with ``quant_types``, ``quant_bits``, ``op_types`` / ``op_names``.
        algorithm: ``'minmax'``, ``'l2'`` or ``'kl'``.
        dummy_input: example input (fusion, BN folding, per-call ranges, whole-graph mode).
        profile: target profile (default ``'tflite'``).
        progress: show a progress bar in :meth:`calibrate` (:func:`slimkit.utils.progress.progress`: still
            silent when stderr is not a terminal or ``SLIMKIT_QUIET=1``); False never shows one.
        max_clip_fraction: ``'kl'`` never clips more than this fraction of a tensor's values (default
            1e-4; None for the unbounded TensorRT search). The entropy criterion alone clips too much on
            small calibration sets (MobileNetV2's pooled features: 1.9 dB output SQNR unbounded,
            43.7 dB bounded, see benchmarks/RESULTS_quantization.md).
        techniques: names (or configured instances) from :mod:`slimkit.algorithms.quantization.techniques` run by
            :meth:`calibrate` (float-stage ones before the ranges are observed, quantized-stage ones after); what each
            did is in ``technique_reports`` afterwards. Techniques that read the graph (``'equalize'``) need
            ``dummy_input``.

    Example:

    >>> import torch
    >>> from slimkit.algorithms.quantization import PostTrainingQuantizer
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    >>> ptq = PostTrainingQuantizer(model, [{'quant_types': ['weight', 'output'], 'op_types': ['Linear']}],
    ...                             algorithm='minmax', progress=False)
    >>> model = ptq.compress()
    >>> ptq.calibrate([torch.randn(4, 4) for _ in range(3)])
    >>> sorted(k for k in ptq.calibration()['0'] if k.startswith('output_'))
    ['output_bits', 'output_qmax', 'output_qmin', 'output_scale', 'output_zero_point']
    """

    fold_bn = True
    live_params = False

    def __init__(self, model: Any, config_list: list[dict], algorithm: str = "minmax", *, optimizer: Any = None,
                 dummy_input: Any = None, profile: str = "tflite", progress: bool = True,
                 max_clip_fraction: float | None = 1e-4, techniques: list[str] | tuple[str, ...] = ()):
        if algorithm not in ALGORITHMS:
            raise ConfigError(f"PostTrainingQuantizer: Expected algorithm to be one of {list(ALGORITHMS)}. "
                              f"Received: algorithm={algorithm!r}")
        super().__init__(model, config_list, optimizer=optimizer, dummy_input=dummy_input, profile=profile)
        self.algorithm = algorithm
        self.techniques = resolve_techniques(techniques)
        graph_users = [technique.name for technique in self.techniques if technique.needs_graph]
        if self.techniques and self.adapter.name != "torch":
            raise ConfigError(f"PostTrainingQuantizer: techniques run on PyTorch models. Expected a torch.nn.Module. "
                              f"Received: a {self.adapter.name} model with techniques="
                              f"{[technique.name for technique in self.techniques]}")
        if graph_users and dummy_input is None:
            raise ConfigError(f"PostTrainingQuantizer: techniques {graph_users} read the captured graph. Expected "
                              "dummy_input=<an example input>. Received: dummy_input=None")
        self.technique_reports: list[TechniqueReport] = []
        self.channel_scales: dict[str, dict[str, Any]] = {}  # explicit multipliers around a Linear ('smooth')
        # float weights a technique replaced by their rounded values ('adaround'), for the float reference that
        # later techniques ('bias_correction') measure against
        self.float_weights: dict[str, Any] = {}
        self.progress = progress
        self.max_clip_fraction = max_clip_fraction
        self.calibrated = False
        self._batch_index = 0  # the batch calibrate() is running (named when it fails)
        self._running: str | None = None  # the technique calibrate() is running (named when it fails)

    def collect_state(self) -> dict[str, Any]:
        """The base state (observers: histograms included) and whether calibration has run."""
        return {**super().collect_state(), "calibrated": self.calibrated,
                "channel_scales": {name: {key: self.adapter.to_numpy(value) for key, value in scales.items()}
                                   for name, scales in self.channel_scales.items()}}

    def restore_state(self, state: Mapping[str, Any]) -> None:
        self.calibrated = bool(state["calibrated"])  # before the base pushes the switches (Keras)
        self.channel_scales = {name: {key: self.adapter.state_tensor(value) for key, value in scales.items()}
                               for name, scales in state.get("channel_scales", {}).items()}
        super().restore_state(state)

    def make_observer(self, layer: Layer, key: str) -> Observer:
        if self.algorithm == "minmax":
            return MinMaxObserver()
        return HistogramObserver(self.algorithm, self.activation_bits(layer, key),
                                 max_clip_fraction=self.max_clip_fraction if self.algorithm == "kl" else None)

    def should_fake_quant(self, layer: Layer) -> bool:
        return self.calibrated

    def calibrate(self, batches: Iterable[Any] | None, num_batches: int | None = None, *,
                  bn_sigmas: float = 6.0) -> None:
        """Run the float model on ``batches`` (tensors, or ``(inputs, targets)`` tuples / lists; a DataLoader
        is iterated lazily, at most ``num_batches`` of it), record activation ranges, then fix every
        parameter. Calling it again adds batches to the ranges recorded so far.

        Data-free (``batches`` None or empty): each quantized output comes from the BatchNorm folded into its layer,
        ``beta +- bn_sigmas * |gamma|`` over the channels, clipped by the fused ReLU / ReLU6
        (:func:`~slimkit.algorithms.quantization.data_free.bn_output_ranges`), pinned as fixed parameters; weights
        are fixed as usual and the techniques run without batches (``'bias_correction'`` from BatchNorm statistics;
        ``'adaround'`` skips every layer, naming it).

        Raises:
            SlimkitError: a batch the model cannot run (wrong shape or dtype: the batch's index is named) or
                NaN / infinite activations (:class:`~slimkit.errors.NonFiniteError`, naming the layer). The
                quantizer and the model are then exactly as before the call: wrappers, state dicts, ranges,
                weights a technique changed.
            ConfigError: data-free, a quantized input or output without a BatchNorm to take its range from (the
                layers are named), or whole-graph quantization (``op_types: ['default']``).
        """
        was_wrapped, before = self.wrapped, self.state_dict()
        weights = self.backend.snapshot(self) if self.techniques else None
        reports, float_weights = len(self.technique_reports), dict(self.float_weights)
        try:
            self._calibrate(batches, num_batches, bn_sigmas)
        except BaseException as error:
            if not was_wrapped:
                self.unwrap_model()
            if weights is not None:
                self.backend.restore(weights)
            del self.technique_reports[reports:]
            self.float_weights = float_weights
            self.load_state_dict(before)
            if isinstance(error, Exception) and not isinstance(error, SlimkitError):
                where = f"technique {self._running!r} failed" if self._running is not None else \
                    f"batch {self._batch_index} could not run through the model"
                raise SlimkitError(f"PostTrainingQuantizer.calibrate: {where} ({type(error).__name__}: {error}). "
                                   "Expected batches the model takes (tensors, or (inputs, targets) tuples); the "
                                   "quantizer and the model are as they were before calibrate().") from error
            raise
        finally:
            self._running = None

    def _calibrate(self, batches: Iterable[Any] | None, num_batches: int | None, bn_sigmas: float) -> None:
        data_free = batches is None or (hasattr(batches, "__len__") and len(batches) == 0)
        if self.techniques or data_free:
            batches = list(itertools.islice(batches or [], num_batches) if num_batches is not None else batches or [])
            num_batches = None
        if data_free:
            missing = data_free_gaps(self)  # before any technique changes the model
            if missing:
                raise ConfigError(f"PostTrainingQuantizer.calibrate: without batches, ranges come from the BatchNorm "
                                  f"folded into each layer; {missing}. Expected calibration batches, or those layers "
                                  "excluded / quantized on weights only.")
        self._run_techniques("float", None if data_free else batches)
        if data_free:
            self._set_data_free_ranges(bn_sigmas)
        else:
            self._observe(batches, num_batches)
        self._run_techniques("quantized", None if data_free else batches)

    def _set_data_free_ranges(self, bn_sigmas: float) -> None:
        self.compress()
        self.observing = False
        for name, key, lo, hi in bn_output_ranges(self, bn_sigmas):
            bits = self.activation_bits(self.states[name].layer, key)
            self.set_fixed_params(name, key, self.range_params(np.array([lo]), np.array([hi]), bits))
        self.calibrated = True
        self.freeze()

    def _run_techniques(self, stage: str, batches: list[Any] | None) -> None:
        for technique in self.techniques:
            if technique.stage == stage:
                self._running = technique.name
                self.technique_reports.append(technique.apply(self, batches))
                self._running = None
                self.state_changed()

    def _observe(self, batches: Iterable[Any], num_batches: int | None) -> None:
        self.compress()
        self.calibrated = False
        self.frozen = False
        self.observing = True
        total = num_batches if num_batches is not None else (len(batches) if hasattr(batches, "__len__") else None)
        if num_batches is not None:
            batches = itertools.islice(batches, num_batches)
        self._batch_index = 0
        with self.backend.inference(self.model):
            for batch in progress(batches, total=total, desc=f"calibrate ({self.algorithm})",
                                  quiet=None if self.progress else True, unit="batch"):
                self.backend.run_batch(self.model, batch)
                self._batch_index += 1
        self.update_activation_params()
        self.observing = False
        self.calibrated = True
        self.freeze()
