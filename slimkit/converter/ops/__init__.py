"""Converters, one small function per ATen op, registered with :func:`slimkit.converter.registry.register`.

Importing this package registers them all; a new op is one decorated function in one of these
modules (or a new module imported here) plus a test.
"""

from slimkit.converter.ops import (  # noqa: F401
    activation,
    attention,
    bitwise,
    conv,
    conv3d,
    elementwise,
    groupnorm,
    indexing,
    linear,
    math,
    norm,
    pool,
    quantize,
    rearrange,
    reduce,
    resize,
    rnn,
    scan,
    shape,
    vector_norm,
)
