"""`python -m flock_pipeline.cli`: the `flock` command."""

import sys

from flock_pipeline.cli import main

sys.exit(main())
