"""``python -m steepest``: the same command line as the ``steepest`` console script."""

from steepest.cli import main

raise SystemExit(main())
