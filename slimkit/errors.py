"""Errors raised by slimkit.

Every user-facing error is a :class:`SlimkitError`. Messages say what was wrong, where
(config index, layer or node name) and what to do, in the form
``"Expected X. Received: name=value"``.

Example:

>>> from slimkit import ConfigError, SlimkitError
>>> issubclass(ConfigError, ValueError) and issubclass(ConfigError, SlimkitError)
True
"""

from __future__ import annotations


class SlimkitError(Exception):
    """Base class of every error slimkit raises on purpose."""


class ConfigError(SlimkitError, ValueError):
    """A ``config_list`` (or another user option) is malformed."""


class UnsupportedOpError(SlimkitError, NotImplementedError):
    """An operator or layer type that the requested transformation does not handle."""


class UnsupportedModelError(SlimkitError, TypeError):
    """The model is not from a framework slimkit has an adapter for."""


class CompressionStateError(SlimkitError, RuntimeError):
    """A method was called at the wrong point of a compressor's lifecycle."""


class CompositionError(CompressionStateError):
    """Compressors stacked on one layer in an order that cannot work (the message names the order that does)."""


class FileFormatError(SlimkitError, ValueError):
    """A file slimkit reads (TFLite flatbuffer, mask file) is truncated, corrupt or of another format."""


class MaskError(SlimkitError, ValueError):
    """Masks that are malformed (not 0/1 tensors) or do not fit the model (unknown layer, wrong shape)."""


class NonFiniteError(SlimkitError, ValueError):
    """A weight or activation holds NaN or infinity where a mask or a quantization range is computed from it."""


class MissingDependencyError(SlimkitError, ImportError):
    """An optional dependency is not installed; the message names the slimkit extra that installs it."""
