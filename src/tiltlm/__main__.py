"""`python -m tiltlm`: the `tilt` command line."""

import sys

from .commands.cli import main

sys.exit(main())
