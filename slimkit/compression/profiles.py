"""Target profiles: what "int8" means for a deployment target, stated once as data.

A :class:`QuantProfile` says how weights and activations are quantized (per-channel or not,
symmetric or not, narrow range, power-of-two scales), the bias bit width, which ops have
output parameters fixed by the target's kernels, and which ops pass their input's parameters
through unchanged (their output shares the input's scale and zero point). Algorithms read the
profile; they never branch on the target.

Register a new profile with :func:`register_profile`.

Example:

>>> from slimkit.compression.profiles import get_profile
>>> tflite = get_profile('tflite')
>>> tflite.weight.per_channel, tflite.weight.narrow, tflite.activation.symmetric
(True, True, False)
>>> p = tflite.fixed_output('softmax', 8)
>>> float(p.scale[0]), int(p.zero_point[0])
(0.00390625, -128)
>>> tflite.shares_input_params('cat'), tflite.shares_input_params('add')
(True, False)
>>> get_profile('tflite_per_tensor').weight.per_channel  # one weight scale per tensor (TFLite's older kernels)
False
>>> int16x8 = get_profile('tflite_int16x8')  # LiteRT's 16x8 kernels: int16 activations, zero point 0
>>> int16x8.activation_bits, int16x8.activation.symmetric, int16x8.bias_bits
(16, True, 64)
>>> p = int16x8.fixed_output('logistic', 16)
>>> float(p.scale[0]), int(p.zero_point[0])
(3.0517578125e-05, 0)
>>> get_profile('tensorrt')
Traceback (most recent call last):
...
slimkit.errors.ConfigError: Expected profile to be one of ['onnx', 'pow2', 'symmetric', 'tflite', ...]. Received: ...
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from slimkit.compression.quant import QParams, Scheme, fixed_params
from slimkit.errors import ConfigError

# Op kinds (canonical names used by the graph quantizer and the converter).
SHARING_OPS = frozenset({"cat", "max_pool", "reshape", "flatten", "view", "permute", "transpose", "squeeze",
                         "unsqueeze", "pad", "split", "chunk", "getitem", "contiguous", "identity", "dropout",
                         "resize", "expand"})


@dataclass(frozen=True)
class QuantProfile:
    """Quantization rules of one deployment target.

    Attributes:
        name: registry name.
        weight: :class:`Scheme` of weights.
        activation: :class:`Scheme` of activations (layer inputs / outputs, graph tensors).
        bias_bits: bit width of quantized bias (scale ``input_scale * weight_scale``).
        fixed: op kind -> ``(scale_times_2**bits, zero_point_offset_from_qmin, signed)``; see
            :meth:`fixed_output`.
        shared: op kinds whose output reuses the input's parameters.
        activation_bits: the activations' bit width the target's kernels take, whatever ``quant_bits`` says for
            weights (None: the config_list's ``quant_bits`` decides, 8 by default).
        min_activation_scale: the least activation scale (float32's machine epsilon, as PyTorch's observers):
            a nearly dead range otherwise gives scales like 1e-14, whose ratios to their neighbours' scales int8
            kernels cannot represent (LiteRT's ADD aborts on them).
    """

    name: str
    weight: Scheme
    activation: Scheme
    bias_bits: int = 32
    fixed: Mapping[str, tuple[float, int]] = field(default_factory=dict)
    shared: frozenset = SHARING_OPS
    min_activation_scale: float = 2.0 ** -23
    activation_bits: int | None = None

    def fixed_output(self, op_kind: str, bits: int) -> QParams | None:
        """Output parameters the target fixes for ``op_kind`` (softmax, logistic, tanh), else None.

        For 8 bits: softmax / logistic ``(1/256, -128)``, tanh ``(1/128, 0)`` (TFLite).
        """
        rule = self.fixed.get(op_kind)
        if rule is None:
            return None
        range_width, zp_offset = rule
        signed = self.activation.signed
        qmin = -(2 ** (bits - 1)) if signed else 0
        scale = range_width / 2 ** bits
        zero_point = qmin + zp_offset * 2 ** (bits - 1) if zp_offset else qmin
        return fixed_params(scale, zero_point, bits, signed)

    def shares_input_params(self, op_kind: str) -> bool:
        return op_kind in self.shared


_PROFILES: dict[str, QuantProfile] = {}


def register_profile(profile: QuantProfile) -> QuantProfile:
    """Add ``profile`` to the registry (by its name) and return it."""
    _PROFILES[profile.name] = profile
    return profile


def get_profile(profile: str | QuantProfile) -> QuantProfile:
    """The registered profile called ``profile`` (a :class:`QuantProfile` is returned as is)."""
    if isinstance(profile, QuantProfile):
        return profile
    if profile not in _PROFILES:
        raise ConfigError(f"Expected profile to be one of {sorted(_PROFILES)}. Received: profile={profile!r}")
    return _PROFILES[profile]


# (range width, zero point as a multiple of 2**(bits-1) above qmin): logistic / softmax cover [0, 1]
# with zero point qmin; tanh covers [-1, 1] with zero point qmin + 2**(bits-1) = 0 for int8.
_TFLITE_FIXED = {"softmax": (1.0, 0), "log_softmax": None, "sigmoid": (1.0, 0), "logistic": (1.0, 0),
                 "tanh": (2.0, 1)}
_TFLITE_FIXED = {k: v for k, v in _TFLITE_FIXED.items() if v is not None}

register_profile(QuantProfile(
    "tflite", weight=Scheme(symmetric=True, per_channel=True, signed=True, narrow=True),
    activation=Scheme(symmetric=False, signed=True), fixed=_TFLITE_FIXED))
register_profile(QuantProfile(
    "tflite_per_tensor", weight=Scheme(symmetric=True, per_channel=False, signed=True, narrow=True),
    activation=Scheme(symmetric=False, signed=True), fixed=_TFLITE_FIXED))
# LiteRT's 16x8 kernels: int16 activations with zero point 0 (symmetric; the full range, as the kernels clamp to
# [-32768, 32767]), int8 per-channel weights, int64 biases; logistic / tanh / softmax outputs on (1/32768, 0).
_INT16_FIXED = {"softmax": (2.0, 1), "sigmoid": (2.0, 1), "logistic": (2.0, 1), "tanh": (2.0, 1)}
register_profile(QuantProfile(
    "tflite_int16x8", weight=Scheme(symmetric=True, per_channel=True, signed=True, narrow=True),
    activation=Scheme(symmetric=True, signed=True), bias_bits=64, fixed=_INT16_FIXED, activation_bits=16))
register_profile(QuantProfile(
    "onnx", weight=Scheme(symmetric=True, per_channel=True, signed=True, narrow=True),
    activation=Scheme(symmetric=False, signed=False)))
register_profile(QuantProfile(
    "symmetric", weight=Scheme(symmetric=True, per_channel=True, signed=True, narrow=True),
    activation=Scheme(symmetric=True, signed=True, narrow=True), fixed=_TFLITE_FIXED))
register_profile(QuantProfile(
    "pow2", weight=Scheme(symmetric=True, per_channel=True, signed=True, narrow=True, pow2=True),
    activation=Scheme(symmetric=True, signed=True, narrow=True, pow2=True)))
