"""Fault detection: detectors (:data:`DETECTORS`) beside the repairs, and the detection suite's cells."""

from harness.detection.detectors import (
    DETECTORS,
    Detector,
    DetectorCost,
    RangeCheck,
    TensorChecksums,
    TestVectorAudit,
    make_detector,
)

__all__ = ["DETECTORS", "Detector", "DetectorCost", "RangeCheck", "TensorChecksums", "TestVectorAudit",
           "make_detector"]
