"""Drift monitoring per camera from the model's own features (DESIGN §10, issue 18).

:mod:`.stats` holds the numpy core (PCA, Ledoit-Wolf, whitening, block bootstrap, PSI),
:mod:`.reference` fits a reference and computes window statistics and thresholds,
:mod:`.alerts` closes windows, applies the alert rule and writes the hints.
"""

from defectscan.drift.alerts import AlertRule, CameraDrift, WindowCollector, WindowResult, hints
from defectscan.drift.reference import DriftError, DriftReference, ImageRows, fit_reference

__all__ = [
    "AlertRule",
    "CameraDrift",
    "DriftError",
    "DriftReference",
    "ImageRows",
    "WindowCollector",
    "WindowResult",
    "fit_reference",
    "hints",
]
