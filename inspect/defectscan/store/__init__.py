"""The results database: typed ORM, idempotent writes and queries, engines and migrations.

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
    from defectscan.store.inspection_queries import (
        DEFAULT_SHIFTS,
        DefectRate,
        LatencyStats,
        ShiftYield,
        defect_rates,
        get_inspection,
        latency_percentiles,
        recent_inspections,
        yield_by_shift,
    )
    from defectscan.store.inspection_writes import (
        CommittedDelivery,
        SaveResult,
        committed_deliveries,
        record_rejection,
        rejection_record,
        save_inspection,
        save_inspections,
    )
    from defectscan.store.model_versions import (
        ensure_model_version,
        get_champion,
        get_model_version,
        list_model_versions,
        set_model_status,
    )
    from defectscan.store.operations import (
        recent_events,
        record_event,
        save_run_metrics,
    )
    from defectscan.store.records import DefectRecord, InspectionRecord
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
    from defectscan.store.training_runs import (
        add_review,
        create_training_run,
        finish_training_run,
        mark_reviews_used,
        reviews_for_training,
        start_training_run,
    )

__all__ = [
    "DEFAULT_SHIFTS",
    "Base",
    "CommittedDelivery",
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
    "committed_deliveries",
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
    "DEFAULT_SHIFTS": "defectscan.store.inspection_queries",
    "Base": "defectscan.store.schema",
    "CommittedDelivery": "defectscan.store.inspection_writes",
    "Defect": "defectscan.store.schema",
    "DefectRate": "defectscan.store.inspection_queries",
    "DefectRecord": "defectscan.store.records",
    "Event": "defectscan.store.schema",
    "Inspection": "defectscan.store.schema",
    "InspectionRecord": "defectscan.store.records",
    "LatencyStats": "defectscan.store.inspection_queries",
    "ModelVersion": "defectscan.store.schema",
    "Review": "defectscan.store.schema",
    "RunMetric": "defectscan.store.schema",
    "SaveResult": "defectscan.store.inspection_writes",
    "ShiftYield": "defectscan.store.inspection_queries",
    "TrainingRun": "defectscan.store.schema",
    "add_review": "defectscan.store.training_runs",
    "alembic_config": "defectscan.store.db",
    "committed_deliveries": "defectscan.store.inspection_writes",
    "create_training_run": "defectscan.store.training_runs",
    "defect_rates": "defectscan.store.inspection_queries",
    "ensure_model_version": "defectscan.store.model_versions",
    "finish_training_run": "defectscan.store.training_runs",
    "get_champion": "defectscan.store.model_versions",
    "get_inspection": "defectscan.store.inspection_queries",
    "get_model_version": "defectscan.store.model_versions",
    "is_retryable": "defectscan.store.db",
    "latency_percentiles": "defectscan.store.inspection_queries",
    "list_model_versions": "defectscan.store.model_versions",
    "make_engine": "defectscan.store.db",
    "mark_reviews_used": "defectscan.store.training_runs",
    "recent_events": "defectscan.store.operations",
    "recent_inspections": "defectscan.store.inspection_queries",
    "record_event": "defectscan.store.operations",
    "record_rejection": "defectscan.store.inspection_writes",
    "rejection_record": "defectscan.store.inspection_writes",
    "retrying": "defectscan.store.db",
    "reviews_for_training": "defectscan.store.training_runs",
    "save_inspection": "defectscan.store.inspection_writes",
    "save_inspections": "defectscan.store.inspection_writes",
    "save_run_metrics": "defectscan.store.operations",
    "session_factory": "defectscan.store.db",
    "set_model_status": "defectscan.store.model_versions",
    "start_training_run": "defectscan.store.training_runs",
    "upgrade_to_head": "defectscan.store.db",
    "with_retries": "defectscan.store.db",
    "yield_by_shift": "defectscan.store.inspection_queries",
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
