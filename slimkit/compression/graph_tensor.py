"""A tensor outside the quantized layers that is integer in the deployed model (whole-graph mode).

Each framework's graph plan (``slimkit.frameworks.torch.quant_graph``,
``slimkit.frameworks.tensorflow.quant_wholegraph``) lists these; the core's
:meth:`slimkit.compression.Quantizer.quantize_graph_tensor` and ``resolve_graph_params`` read their ``key``,
``kind`` and ``inputs``.

Example:

>>> from slimkit.compression.graph_tensor import GraphTensor
>>> GraphTensor('/0/add/0', 'add', 'add', inputs=['layer:conv1', 'graph:input/0']).inputs
['layer:conv1', 'graph:input/0']
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GraphTensor:
    """One integer tensor of a graph plan.

    Attributes:
        key: its key in the plan (``'input/<i>'`` for model inputs).
        kind: canonical op kind (``'add'``, ``'cat'``, ``'max_pool'`` ...).
        node: the node (PyTorch) or layer (Keras) that produces it.
        module: the module / layer it belongs to.
        call_index: which call of that module.
        inputs: owners of its tensor inputs: ``'layer:<name>'`` or ``'graph:<key>'`` (None if unknown).
    """

    key: str
    kind: str
    node: str
    module: str = ""
    call_index: int = 0
    inputs: list = field(default_factory=list)
