"""The model registry's rows: register a version, look versions up, pick and change status.

Every function takes a keyword-only ``session`` and never commits: the caller owns the
transaction. A version name identifies one set of weights (one sha256); at most one version
per model name is the champion at any moment.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from defectscan.errors import StoreError
from defectscan.store._sql import _insert
from defectscan.store.schema import MODEL_STATUSES, ModelVersion, utcnow

__all__ = [
    "ensure_model_version",
    "get_champion",
    "get_model_version",
    "list_model_versions",
    "set_model_status",
]


def get_model_version(version: str, *, session: Session) -> ModelVersion | None:
    """The registered model version called ``version``, or None."""
    return session.scalars(select(ModelVersion).where(ModelVersion.version == version)).first()


def _require_model_version(version: str, session: Session) -> ModelVersion:
    found = get_model_version(version, session=session)
    if found is None:
        msg = f"model version {version!r} is not registered; register it with ensure_model_version"
        raise StoreError(msg)
    return found


def ensure_model_version(
    *,
    session: Session,
    version: str,
    sha256: str,
    name: str,
    checkpoint_path: str | None,
    spec: dict[str, Any],
    activation: str,
    class_names: list[str],
    status: str = "candidate",
    metrics: dict[str, Any] | None = None,
    parent_version: str | None = None,
    training_run_id: int | None = None,
    dataset_fingerprint: str | None = None,
) -> ModelVersion:
    """Register a model version, or return it if it is already registered.

    Safe to call from several processes at once. A version already registered with other
    weights (another sha256) is an error: version names are meant to identify weights.
    """
    if status not in MODEL_STATUSES:
        msg = f"model status {status!r}: expected one of {MODEL_STATUSES}"
        raise StoreError(msg)
    existing = get_model_version(version, session=session)
    if existing is None:
        parent_id = None
        if parent_version is not None:
            parent_id = _require_model_version(parent_version, session).id
        stmt = (
            _insert(session, ModelVersion)
            .values(
                version=version,
                name=name,
                sha256=sha256,
                checkpoint_path=checkpoint_path,
                status="candidate",
                activation=activation,
                class_names=list(class_names),
                spec=spec,
                metrics=metrics,
                parent_id=parent_id,
                training_run_id=training_run_id,
                dataset_fingerprint=dataset_fingerprint,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["version"])
        )
        session.execute(stmt)
        existing = _require_model_version(version, session)
        if status != "candidate" and existing.status == "candidate":
            set_model_status(version, status, session=session)
    if existing.sha256 != sha256:
        msg = (
            f"model version {version!r} is registered with weights {existing.sha256[:12]}, "
            f"not {sha256[:12]}; give the new checkpoint its own version name"
        )
        raise StoreError(msg)
    if checkpoint_path and existing.checkpoint_path != checkpoint_path:
        # Same weights at another place: keep a path that still loads (an absolute one that
        # exists wins over a relative or vanished one).
        old = existing.checkpoint_path
        if not old or not os.path.isabs(old) or not os.path.isfile(old):
            existing.checkpoint_path = checkpoint_path
            session.flush()
    return existing


def list_model_versions(
    *, session: Session, status: str | None = None, name: str | None = None
) -> list[ModelVersion]:
    """Registered model versions, newest first."""
    stmt = select(ModelVersion)
    if status is not None:
        stmt = stmt.where(ModelVersion.status == status)
    if name is not None:
        stmt = stmt.where(ModelVersion.name == name)
    stmt = stmt.order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
    return list(session.scalars(stmt))


def get_champion(*, session: Session, name: str | None = None) -> ModelVersion | None:
    """The champion of model ``name`` (or the most recently promoted of any name)."""
    stmt = select(ModelVersion).where(ModelVersion.status == "champion")
    if name is not None:
        stmt = stmt.where(ModelVersion.name == name)
    stmt = stmt.order_by(ModelVersion.promoted_at.desc().nulls_last(), ModelVersion.id.desc())
    return session.scalars(stmt.limit(1)).first()


def set_model_status(version: str, status: str, *, session: Session) -> ModelVersion:
    """Change a version's status; promoting it retires the champion of the same name."""
    if status not in MODEL_STATUSES:
        msg = f"model status {status!r}: expected one of {MODEL_STATUSES}"
        raise StoreError(msg)
    model = _require_model_version(version, session)
    now = utcnow()
    if status == "champion" and model.status != "champion":
        # Demote first: the partial unique index allows one champion per name at any moment.
        session.execute(
            update(ModelVersion)
            .where(
                ModelVersion.name == model.name,
                ModelVersion.status == "champion",
                ModelVersion.id != model.id,
            )
            .values(status="retired", retired_at=now)
        )
        model.promoted_at = now
        model.retired_at = None
    elif status == "retired" and model.status != "retired":
        model.retired_at = now
    model.status = status
    session.flush()
    return model
