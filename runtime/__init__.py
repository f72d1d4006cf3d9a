"""lineside's runtime: runs a bundle on the box beside the line. Never imports torch."""

from .bundle import Bundle
from .detector import Detector
from .manifest import BundleError
from .result import Region, Result
from .settings import DetectorSettings

__all__ = ["Bundle", "BundleError", "Detector", "DetectorSettings", "Region", "Result"]
