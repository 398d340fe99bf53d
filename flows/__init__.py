"""Prefect 3 flows of defectscan: orchestration only, thin tasks over the library.

Importing this package prepares Prefect's environment before Prefect itself is imported
(:func:`defectscan.orchestration.configure_prefect`): without ``PREFECT_API_URL`` the flows run
on Prefect's ephemeral API with ``PREFECT_HOME`` under ``var/``, telemetry off and quiet
logs; with it, they report to that server.
"""

from __future__ import annotations

from defectscan.orchestration import configure_prefect

configure_prefect()

__all__: list[str] = []
