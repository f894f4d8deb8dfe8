"""Generate the supported-operator table of docs/converter.md from the registry.

Run ``python -m slimkit.converter.docs`` to print it; a test checks the docs are up to date.

Example:

>>> print(supported_ops_markdown().splitlines()[0])
| ATen op | TFLite ops emitted |
"""

from __future__ import annotations

from slimkit.converter.lower import PASS_THROUGH
from slimkit.converter.registry import supported_ops


def supported_ops_markdown() -> str:
    rows = ["| ATen op | TFLite ops emitted |", "|---|---|"]
    for target, emits in supported_ops():
        rows.append(f"| `{target}` | {', '.join(emits) if emits else '(layout only, no op)'} |")
    for target in sorted(PASS_THROUGH):
        rows.append(f"| `{target}` | (identity, no op) |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(supported_ops_markdown(), end="")
