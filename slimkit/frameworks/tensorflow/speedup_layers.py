"""Smaller Keras layers: for each layer a speedup changes, its new config and its sliced weights.

A registered function takes the (masked) layer, its name and the :class:`~.speedup_analysis.Plan`, and
returns ``(config, {variable name: array})``; the new layer is ``type(layer).from_config(config)`` and
gets those arrays once the cloned graph has built it. Layers without a function keep their config and
their weights (``None``: copied in order, for layers whose sublayers repeat variable names).

Example:

>>> import keras, numpy as np
>>> from slimkit.frameworks.tensorflow.speedup_analysis import Plan
>>> from slimkit.frameworks.tensorflow.speedup_layers import rebuild
>>> layer = keras.layers.Dense(3, name='fc')
>>> layer.build((None, 2))
>>> plan = Plan({('fc', 'in'): np.array([True, True]), ('fc', 'out'): np.array([True, False, True])})
>>> config, weights = rebuild(layer, 'fc', plan)
>>> config['units'], weights['kernel'].shape, weights['bias'].shape
(2, (2, 2), (2,))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from slimkit.frameworks.tensorflow.speedup_analysis import Plan

L = keras.layers
Rebuild = Callable[[Any, str, Plan], tuple[dict[str, Any], dict[str, np.ndarray]]]
REBUILDS: dict[type, Rebuild] = {}


def rebuilds(*types: type) -> Callable[[Rebuild], Rebuild]:
    """Register ``fn(layer, name, plan) -> (config, weights)`` for layers of ``types``."""

    def register(fn: Rebuild) -> Rebuild:
        REBUILDS.update(dict.fromkeys(types, fn))
        return fn

    return register


def weights_of(layer: Any) -> dict[str, np.ndarray]:
    """The layer's variables by name (``'kernel'``, ``'bias'``, ``'gamma'``, ``'moving_mean'`` ...)."""
    return {var.name: np.asarray(var.numpy()) for var in layer.weights}


def rebuild(layer: Any, name: str, plan: Plan) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """The config and weights of ``layer`` after the speedup that ``plan`` describes; weights None: the layer's
    own, unchanged."""
    for cls in type(layer).__mro__:
        if cls in REBUILDS:
            return REBUILDS[cls](layer, name, plan)
    return layer.get_config(), None


def _fold(bias: np.ndarray, rows: np.ndarray, folds: dict[int, float]) -> np.ndarray:
    """``bias + sum(constant * rows[channel])`` over the removed input channels (float64, then the bias dtype)."""
    total = bias.astype(np.float64)
    for channel, constant in folds.items():
        total = total + constant * rows[channel].astype(np.float64)
    return total.astype(bias.dtype)


def _biased(layer: Any, name: str, plan: Plan, rows: np.ndarray, config: dict[str, Any],
            weights: dict[str, np.ndarray], keep_out: np.ndarray) -> None:
    """Fold the removed inputs' constants (through ``rows``: input channel -> output channels) into the bias,
    giving the layer one if it had none and a fold is nonzero."""
    folds = plan.folds.get(name, {})
    bias = weights.get("bias", np.zeros(rows.shape[1], dtype=rows.dtype))
    if folds or layer.use_bias:
        weights["bias"] = _fold(bias, rows, folds)[keep_out]
        config["use_bias"] = True


@rebuilds(L.Conv1D, L.Conv2D, L.Conv3D, L.Dense)
def conv(layer: Any, name: str, plan: Plan) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    config, weights = layer.get_config(), weights_of(layer)
    keep_in, keep_out = plan.keep[(name, "in")], plan.keep[(name, "out")]
    kernel = weights["kernel"]
    _biased(layer, name, plan, kernel.reshape(-1, *kernel.shape[-2:]).sum(0), config, weights, keep_out)
    weights["kernel"] = kernel[..., keep_in, :][..., keep_out]
    config["units" if isinstance(layer, L.Dense) else "filters"] = int(keep_out.sum())
    return config, weights


@rebuilds(L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
def conv_transpose(layer: Any, name: str, plan: Plan) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    config, weights = layer.get_config(), weights_of(layer)
    keep_in, keep_out = plan.keep[(name, "in")], plan.keep[(name, "out")]
    weights["kernel"] = weights["kernel"][..., keep_out, :][..., keep_in]
    if layer.use_bias:
        weights["bias"] = weights["bias"][keep_out]
    config["filters"] = int(keep_out.sum())
    return config, weights


@rebuilds(L.DepthwiseConv1D, L.DepthwiseConv2D)
def depthwise(layer: Any, name: str, plan: Plan) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    config, weights = layer.get_config(), weights_of(layer)
    keep_in = plan.keep[(name, "in")]
    weights["kernel"] = weights["kernel"][..., keep_in, :]
    if layer.use_bias:
        weights["bias"] = weights["bias"].reshape(keep_in.size, -1)[keep_in].ravel()
    return config, weights


@rebuilds(L.SeparableConv1D, L.SeparableConv2D)
def separable(layer: Any, name: str, plan: Plan) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    config, weights = layer.get_config(), weights_of(layer)
    keep_in, keep_mid, keep_out = (plan.keep[(name, role)] for role in ("in", "mid", "out"))
    pointwise = weights["pointwise_kernel"]
    _biased(layer, name, plan, pointwise.reshape(pointwise.shape[-2:]), config, weights, keep_out)
    weights["depthwise_kernel"] = weights["depthwise_kernel"][..., keep_in, :]
    weights["pointwise_kernel"] = pointwise[..., keep_mid, :][..., keep_out]
    config["filters"] = int(keep_out.sum())
    return config, weights


@rebuilds(L.BatchNormalization)
def batch_norm(layer: Any, name: str, plan: Plan) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    keep = plan.keep[(name, "ch")]
    return layer.get_config(), {key: array[keep] for key, array in weights_of(layer).items()}


@rebuilds(L.PReLU)
def prelu(layer: Any, name: str, plan: Plan) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    return layer.get_config(), {"alpha": weights_of(layer)["alpha"][..., plan.keep[(name, "ch")]]}


@rebuilds(L.Reshape)
def reshape(layer: Any, name: str, plan: Plan) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    config = layer.get_config()
    keep = plan.keep.get((name, "ch"))
    if keep is not None:
        config["target_shape"] = (*tuple(config["target_shape"])[:-1], int(keep.sum()))
    elif len(config["target_shape"]) == 1:  # a flatten: the size follows the input
        config["target_shape"] = (-1,)
    return config, {}
