"""``python -m ptasr transcribe | evaluate | export``: the same as the ``ptasr`` console script."""

import sys

from ptasr.cli import main

if __name__ == "__main__":
    sys.exit(main())
