"""`python -m tiltlm.cli` (what `torchrun ... -m tiltlm.cli train` runs): the `tilt` command line."""

import sys

from .commands.cli import main

if __name__ == "__main__":
    sys.exit(main())
