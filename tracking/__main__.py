"""``python -m tokcal``: the ``tokcal`` command line."""

from __future__ import annotations

import sys

from tokcal.cli.main import main

if __name__ == "__main__":  # a guard: engines that spawn workers re-import the main module
    sys.exit(main())
