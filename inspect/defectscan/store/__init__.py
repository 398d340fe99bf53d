"""The results database: typed ORM, idempotent repository functions, engines and migrations.

The names below load on first use (PEP 562): ``import defectscan.store.records`` pulls in
neither SQLAlchemy nor torch, so the pipeline can build plain :class:`InspectionRecord` values
cheaply; a writer stores them with :func:`save_inspections` inside :func:`retrying`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from defectscan.store.db import (
        alembic_config,
        is_retryable,
        make_engine,
        retrying,
        session_factory,
        upgrade_to_head,
        with_retries,
    )
    from defectscan.store.records import DefectRecord, InspectionRecord
    from defectscan.store.repository import (
        DEFAULT_SHIFTS,
        DefectRate,
        LatencyStats,
        SaveResult,
        ShiftYield,
        add_review,
        create_training_run,
        defect_rates,
        ensure_model_version,
        finish_training_run,
        get_champion,
        get_inspection,
        get_model_version,
        latency_percentiles,
        list_model_versions,
        mark_reviews_used,
        recent_events,
        recent_inspections,
        record_event,
        record_rejection,
        rejection_record,
        reviews_for_training,
        save_inspection,
        save_inspections,
        save_run_metrics,
        set_model_status,
        start_training_run,
        yield_by_shift,
    )
    from defectscan.store.schema import (
        Base,
        Defect,
        Event,
        Inspection,
        ModelVersion,
        Review,
        RunMetric,
        TrainingRun,
    )

__all__ = [
    "DEFAULT_SHIFTS",
    "Base",
    "Defect",
    "DefectRate",
    "DefectRecord",
    "Event",
    "Inspection",
    "InspectionRecord",
    "LatencyStats",
    "ModelVersion",
    "Review",
    "RunMetric",
    "SaveResult",
    "ShiftYield",
    "TrainingRun",
    "add_review",
    "alembic_config",
    "create_training_run",
    "defect_rates",
    "ensure_model_version",
    "finish_training_run",
    "get_champion",
    "get_inspection",
    "get_model_version",
    "is_retryable",
    "latency_percentiles",
    "list_model_versions",
    "make_engine",
    "mark_reviews_used",
    "recent_events",
    "recent_inspections",
    "record_event",
    "record_rejection",
    "rejection_record",
    "retrying",
    "reviews_for_training",
    "save_inspection",
    "save_inspections",
    "save_run_metrics",
    "session_factory",
    "set_model_status",
    "start_training_run",
    "upgrade_to_head",
    "with_retries",
    "yield_by_shift",
]

_LAZY: dict[str, str] = {
    "DEFAULT_SHIFTS": "defectscan.store.repository",
    "Base": "defectscan.store.schema",
    "Defect": "defectscan.store.schema",
    "DefectRate": "defectscan.store.repository",
    "DefectRecord": "defectscan.store.records",
    "Event": "defectscan.store.schema",
    "Inspection": "defectscan.store.schema",
    "InspectionRecord": "defectscan.store.records",
    "LatencyStats": "defectscan.store.repository",
    "ModelVersion": "defectscan.store.schema",
    "Review": "defectscan.store.schema",
    "RunMetric": "defectscan.store.schema",
    "SaveResult": "defectscan.store.repository",
    "ShiftYield": "defectscan.store.repository",
    "TrainingRun": "defectscan.store.schema",
    "add_review": "defectscan.store.repository",
    "alembic_config": "defectscan.store.db",
    "create_training_run": "defectscan.store.repository",
    "defect_rates": "defectscan.store.repository",
    "ensure_model_version": "defectscan.store.repository",
    "finish_training_run": "defectscan.store.repository",
    "get_champion": "defectscan.store.repository",
    "get_inspection": "defectscan.store.repository",
    "get_model_version": "defectscan.store.repository",
    "is_retryable": "defectscan.store.db",
    "latency_percentiles": "defectscan.store.repository",
    "list_model_versions": "defectscan.store.repository",
    "make_engine": "defectscan.store.db",
    "mark_reviews_used": "defectscan.store.repository",
    "recent_events": "defectscan.store.repository",
    "recent_inspections": "defectscan.store.repository",
    "record_event": "defectscan.store.repository",
    "record_rejection": "defectscan.store.repository",
    "rejection_record": "defectscan.store.repository",
    "retrying": "defectscan.store.db",
    "reviews_for_training": "defectscan.store.repository",
    "save_inspection": "defectscan.store.repository",
    "save_inspections": "defectscan.store.repository",
    "save_run_metrics": "defectscan.store.repository",
    "session_factory": "defectscan.store.db",
    "set_model_status": "defectscan.store.repository",
    "start_training_run": "defectscan.store.repository",
    "upgrade_to_head": "defectscan.store.db",
    "with_retries": "defectscan.store.db",
    "yield_by_shift": "defectscan.store.repository",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
