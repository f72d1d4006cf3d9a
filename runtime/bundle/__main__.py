"""python -m runtime.bundle DIR: the bundle check (same as python -m runtime.check DIR)."""

import sys

from .check import main

if __name__ == "__main__":
    sys.exit(main())
