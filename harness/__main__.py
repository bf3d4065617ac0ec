"""``python -m editbench``: the command line."""

import sys

from editbench.cli import main

sys.exit(main())
