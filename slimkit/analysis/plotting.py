"""The figure and PNG writing shared by the analysis tables' ``plot()`` methods (matplotlib, Agg backend).

Example:

>>> import os, tempfile
>>> from slimkit.analysis.plotting import new_axes, save_png
>>> figure, axes = new_axes('example', (4, 3))
>>> _ = axes.plot([0, 1], [1, 2], label='line')
>>> path = os.path.join(tempfile.mkdtemp(), 'plot.png')
>>> save_png(figure, axes, 'a title', path)
>>> os.path.getsize(path) > 0
True
"""

from __future__ import annotations

import os
from typing import Any

from slimkit.utils.files import atomic_path
from slimkit.utils.optional import require


def new_axes(owner: str, size: tuple[float, float]) -> tuple[Any, Any]:
    """A matplotlib ``Figure`` of ``size`` inches and its one ``Axes`` (``owner`` names who needs matplotlib when it
    is missing)."""
    require("matplotlib", owner).use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=size)
    return figure, figure.add_subplot()


def save_png(figure: Any, axes: Any, title: str, path: str | os.PathLike) -> None:
    """Title, grid and legend on ``axes``, then ``figure`` written to ``path`` as a PNG (atomically)."""
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small", loc="best")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
