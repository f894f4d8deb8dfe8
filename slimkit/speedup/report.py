"""What a speedup did: per layer channels before/after, and model parameters and MACs before/after.

Example:

>>> from slimkit.speedup.report import LayerChange, SpeedupReport
>>> report = SpeedupReport([LayerChange('conv', 'Conv2d', 3, 3, 8, 4)], 100, 60, 1000, 500, 0.1)
>>> report.params_ratio, report.flops_ratio
(0.6, 0.5)
>>> print(report)  # doctest: +ELLIPSIS
layer  type    in     out
conv   Conv2d  3->3   8->4
params 100 -> 60 (0.60x); MACs 1,000 -> 500 (0.50x); speedup took 0.10 s
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LayerChange:
    """One replaced layer: input and output channels (features for Linear) before and after."""

    name: str
    type: str
    in_before: int
    in_after: int
    out_before: int
    out_after: int


@dataclass
class SpeedupReport:
    """Returned by :meth:`slimkit.speedup.ModelSpeedup.speedup_model`.

    Attributes:
        layers: the layers that were replaced, in model order.
        params_before, params_after: parameter counts of the whole model.
        flops_before, flops_after: multiply-accumulates per sample (conv, linear, batch-norm); 0 when the
            speedup ran with verify=False (the counts come from its two forward passes).
        seconds: wall time of the speedup.
        max_relative_error: measured difference to the masked model on the dummy input (None if not checked).
    """

    layers: list[LayerChange]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    seconds: float
    max_relative_error: float | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def params_ratio(self) -> float:
        return self.params_after / max(self.params_before, 1)

    @property
    def flops_ratio(self) -> float:
        return self.flops_after / max(self.flops_before, 1)

    def __str__(self) -> str:
        rows = [("layer", "type", "in", "out")] + [
            (c.name, c.type, f"{c.in_before}->{c.in_after}", f"{c.out_before}->{c.out_after}") for c in self.layers]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.append(f"params {self.params_before:,} -> {self.params_after:,} ({self.params_ratio:.2f}x); "
                     f"MACs {self.flops_before:,} -> {self.flops_after:,} ({self.flops_ratio:.2f}x); "
                     f"speedup took {self.seconds:.2f} s")
        return "\n".join(lines)
