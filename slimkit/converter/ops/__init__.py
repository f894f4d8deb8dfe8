"""Converters, one small function per ATen op, registered with :func:`slimkit.converter.registry.register`.

Importing this package registers them all; a new op is one decorated function in one of these
modules (or a new module imported here) plus a test.
"""

from slimkit.converter.ops import (  # noqa: F401
    activation,
    attention,
    conv,
    elementwise,
    linear,
    logical,
    norm,
    pool,
    quantize,
    reduce,
    resize,
    rnn,
    shape,
    vector_norm,
)
