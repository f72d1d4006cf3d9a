"""The precisions a graph is exported at and run with, named once.

The bundle contract (bundle/manifest.py) and the settings (settings.py) both
speak of them, and neither may depend on the other, so the names live below
both.
"""

PRECISIONS = ("fp32", "fp16", "int8")
