"""lineside's runtime: runs a bundle on the box beside the line. Never imports torch."""

from .bundle.loader import Bundle
from .bundle.manifest import BundleError
from .detect.detector import Detector
from .detect.result import Region, Result
from .settings import DetectorSettings

__all__ = ["Bundle", "BundleError", "Detector", "DetectorSettings", "Region", "Result"]
