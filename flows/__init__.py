"""Prefect 3 flows of defectscan: orchestration only, thin tasks over the library.

Importing this package prepares Prefect's environment before Prefect itself is imported
(:func:`defectscan.orchestration.configure_prefect`): without ``PREFECT_API_URL`` the flows run
on Prefect's ephemeral API with ``PREFECT_HOME`` under ``var/``, telemetry off and quiet
logs, and the temporary server that API starts dies with this process, even after SIGKILL
(:func:`defectscan.orchestration.guard_ephemeral_server`); with it, they report to that server.
"""

from __future__ import annotations

from defectscan.orchestration import configure_prefect, guard_ephemeral_server

configure_prefect()
guard_ephemeral_server()

__all__: list[str] = []
