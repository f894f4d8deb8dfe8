"""docs/converter.md lists exactly the registered converters."""

import os

from slimkit.converter.docs import supported_ops_markdown

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "converter.md")


def test_supported_ops_table_is_current():
    with open(DOC) as f:
        text = f.read()
    assert supported_ops_markdown() in text, "run: python -m slimkit.converter.docs and paste into docs/converter.md"
