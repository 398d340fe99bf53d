"""defectscan: industrial defect inspection with a tiled UNet.

The package is import-light on purpose: importing ``defectscan`` pulls in no torch, OpenCV or
SQLAlchemy, so that the CLI starts fast and ``sources``/``store`` stay free of torch.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
