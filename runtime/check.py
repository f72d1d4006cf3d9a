"""python -m runtime.check DIR: verify a bundle and run it once here (runtime/bundle/check.py)."""

import sys

from .bundle.check import main

if __name__ == "__main__":
    sys.exit(main())
