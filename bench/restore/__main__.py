import sys

from bench.restore.cli import main

sys.exit(main())
