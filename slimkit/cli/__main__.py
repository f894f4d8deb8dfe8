"""``python -m slimkit.cli``: the same as the ``slimkit`` command."""

import sys

from slimkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
