"""`python -m expfs`: the same entry point as the `expfs` console script."""

import sys

from expfs_cli.main import main

sys.exit(main())
