"""Edge anomaly detection: energy rules, a statistical detector, and the events they raise.

The stage is :class:`Detector` (``detect = Detector(config); detect(db, readings)``); the
offline twin is :func:`replay`. See docs/anomalies.md.
"""

from gateway.pipeline.detect.config import (
    DEFAULT_THRESHOLD,
    DetectConfig,
    DetectConfigError,
    Schedule,
)
from gateway.pipeline.detect.engine import Detector, check_silent, migrations, replay
from gateway.pipeline.detect.events import Event

__all__ = [
    "DEFAULT_THRESHOLD",
    "DetectConfig",
    "DetectConfigError",
    "Detector",
    "Event",
    "Schedule",
    "check_silent",
    "migrations",
    "replay",
]
