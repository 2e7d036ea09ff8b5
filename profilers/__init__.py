"""Latency profilers: a roofline model per GPU, measured latency on the local device, and calibration.

Importing this package pulls in no torch; `measured`, `local` and `calibrate`'s measuring callers do.
"""

from .analytical import RooflineModel
from .hardware import BUILTIN_PROFILES, HardwareError, HardwareProfile, get_profile, load_profile
from .latency import LatencyEstimate, LatencyModel, Workload

__all__ = [
    "BUILTIN_PROFILES",
    "HardwareError",
    "HardwareProfile",
    "LatencyEstimate",
    "LatencyModel",
    "RooflineModel",
    "Workload",
    "get_profile",
    "load_profile",
]
