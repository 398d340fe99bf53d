"""Typed SQLAlchemy 2 ORM for results, metrics and the model registry.

One schema for SQLite (embedded default) and PostgreSQL (production). Everything that would
make the two drift apart under Alembic's autogenerate is pinned here: a naming convention so
constraint names are the same on both, JSON that is JSONB on PostgreSQL, string status columns
guarded by named CHECK constraints (not native enums, which autogenerate compares poorly), and
timezone-aware UTC datetimes on both (SQLite has no time zones: see :class:`UTCDateTime`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "ACTIVATIONS",
    "DRIFT_STATES",
    "INSPECTION_STATUSES",
    "MODEL_STATUSES",
    "NAMING_CONVENTION",
    "REVIEW_DECISIONS",
    "REVIEW_QUEUE_STATES",
    "REVIEW_STRATA",
    "ROLES",
    "TRAINING_STATUSES",
    "TRAINING_TRIGGERS",
    "VERDICTS",
    "AuditEntry",
    "Base",
    "ConsoleSession",
    "Defect",
    "DriftReferenceRow",
    "DriftWindowRow",
    "Event",
    "Inspection",
    "LineControl",
    "ModelVersion",
    "Review",
    "ReviewQueueItem",
    "RunMetric",
    "ThresholdRule",
    "TrainingRun",
    "UTCDateTime",
    "User",
    "utcnow",
]

MODEL_STATUSES = ("candidate", "champion", "retired")
TRAINING_TRIGGERS = ("scheduled", "operator", "cli", "drift")
TRAINING_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
INSPECTION_STATUSES = ("ok", "rejected")
VERDICTS = ("pass", "fail")
REVIEW_DECISIONS = ("confirm", "reject")
ACTIVATIONS = ("sigmoid", "softmax")
DRIFT_STATES = ("ok", "warning", "critical")
REVIEW_QUEUE_STATES = ("open", "done", "expired")
#: The review queue's strata (``defectscan.drift.review_sampling.STRATUM_SHARES``).
REVIEW_STRATA = ("close_call", "novelty", "class_balance", "random_pass", "random_fail", "flagged")
#: Console roles, least to most allowed: each role may do what the ones before it may.
ROLES = ("viewer", "operator", "engineer", "admin")

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on PostgreSQL (indexable, compact), plain JSON text on SQLite.
_JSON = JSON().with_variant(JSONB(), "postgresql")
# 64-bit keys on PostgreSQL for the high-volume tables; SQLite only autoincrements INTEGER.
_BIG_ID = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every dialect.

    PostgreSQL stores ``timestamptz``. SQLite stores text without an offset, so values are
    converted to UTC before they are written and marked UTC when read back. A naive datetime
    is refused: guessing its zone would silently shift results by hours.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            msg = (
                f"naive datetime {value.isoformat()} given to the results database; "
                "pass a timezone-aware datetime (e.g. datetime.now(UTC))"
            )
            raise ValueError(msg)
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base with the shared naming convention and type map."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {  # noqa: RUF012 (SQLAlchemy reads this class attribute)
        datetime: UTCDateTime(),
        dict[str, Any]: _JSON,
        list[Any]: _JSON,
    }


class TrainingRun(Base):
    """One training (or fine-tuning) run, whatever triggered it."""

    __tablename__ = "training_runs"
    __table_args__ = (
        CheckConstraint(_in("trigger", TRAINING_TRIGGERS), name="trigger"),
        CheckConstraint(_in("status", TRAINING_STATUSES), name="status"),
        Index("ix_training_runs_status_created_at", "status", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trigger: Mapped[str] = mapped_column(String(16))
    requested_by: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    params: Mapped[dict[str, Any] | None] = mapped_column(_JSON)
    dataset_stats: Mapped[dict[str, Any] | None] = mapped_column(_JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(_JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    model_versions: Mapped[list[ModelVersion]] = relationship(back_populates="training_run")
    reviews: Mapped[list[Review]] = relationship(back_populates="used_in_training_run")

    def __repr__(self) -> str:
        return f"TrainingRun(id={self.id}, trigger={self.trigger!r}, status={self.status!r})"


class ModelVersion(Base):
    """A trained model checkpoint and its place in the registry."""

    __tablename__ = "model_versions"
    __table_args__ = (
        CheckConstraint(_in("status", MODEL_STATUSES), name="status"),
        CheckConstraint(_in("activation", ACTIVATIONS), name="activation"),
        # At most one champion per model name, enforced by the database itself.
        Index(
            "uq_model_versions_champion_name",
            "name",
            unique=True,
            sqlite_where=text("status = 'champion'"),
            postgresql_where=text("status = 'champion'"),
        ),
        Index("ix_model_versions_name_status", "name", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(128), unique=True)
    name: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    activation: Mapped[str] = mapped_column(String(16))
    class_names: Mapped[list[Any]] = mapped_column(_JSON)
    spec: Mapped[dict[str, Any]] = mapped_column(_JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(_JSON)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    training_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("training_runs.id", ondelete="SET NULL")
    )
    dataset_fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[datetime | None]
    retired_at: Mapped[datetime | None]

    parent: Mapped[ModelVersion | None] = relationship(remote_side=[id])
    training_run: Mapped[TrainingRun | None] = relationship(back_populates="model_versions")

    def __repr__(self) -> str:
        return f"ModelVersion(version={self.version!r}, status={self.status!r})"


class Inspection(Base):
    """One image under one model version: its verdict, or why it was rejected.

    A delivery from a source (a camera folder's file, a stream entry) carries its source
    identity in ``source_key`` and is unique on ``(source_key, sha256)`` under *any* model
    version: a redelivery after a crash or a model switch is the same inspection, while two
    parts that happen to have identical bytes are two deliveries with two rows. Rows without a
    source identity (``inspect --store``, ``batch``: explicit inspections of files or archived
    images) stay unique on ``(sha256, model_version_id)``, so re-running them stores nothing new.
    """

    __tablename__ = "inspections"
    __table_args__ = (
        UniqueConstraint("source_key", "sha256"),
        Index(
            "uq_inspections_sha256_model_version_id_unkeyed",
            "sha256",
            "model_version_id",
            unique=True,
            sqlite_where=text("source_key IS NULL"),
            postgresql_where=text("source_key IS NULL"),
        ),
        CheckConstraint(_in("status", INSPECTION_STATUSES), name="status"),
        # ok rows have a verdict, rejected rows have none but say why.
        CheckConstraint(
            "(status = 'ok' AND verdict IN ('pass', 'fail'))"
            " OR (status = 'rejected' AND verdict IS NULL AND error_kind IS NOT NULL)",
            name="verdict",
        ),
        Index("ix_inspections_line_finished_at", "line", "finished_at"),
        Index("ix_inspections_camera_finished_at", "camera", "finished_at"),
        Index("ix_inspections_model_version_id_finished_at", "model_version_id", "finished_at"),
        Index("ix_inspections_finished_at", "finished_at"),
        Index("ix_inspections_status", "status"),
        Index("ix_inspections_verdict_finished_at", "verdict", "finished_at"),
    )

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    uri: Mapped[str] = mapped_column(Text)
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="RESTRICT")
    )
    status: Mapped[str] = mapped_column(String(16))
    verdict: Mapped[str | None] = mapped_column(String(8))
    camera: Mapped[str | None] = mapped_column(String(64))
    line: Mapped[str | None] = mapped_column(String(64))
    width: Mapped[int | None]
    height: Mapped[int | None]
    channels: Mapped[int | None]
    captured_at: Mapped[datetime | None]
    received_at: Mapped[datetime | None]
    finished_at: Mapped[datetime] = mapped_column(default=utcnow)
    timings_ms: Mapped[dict[str, Any]] = mapped_column(_JSON, default=dict)
    # timings_ms["total"] as a column: latency percentiles are computed over it.
    total_ms: Mapped[float | None] = mapped_column(Float)
    n_defects: Mapped[int] = mapped_column(default=0)
    error_kind: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    mask_path: Mapped[str | None] = mapped_column(Text)
    overlay_path: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(String(32))
    source_id: Mapped[str | None] = mapped_column(String(256))
    #: The delivery's identity at its source (``ImageRecord.source_key``); None for explicit
    #: inspections of files and archived images.
    source_key: Mapped[str | None] = mapped_column(String(512))

    model_version: Mapped[ModelVersion] = relationship(lazy="joined", innerjoin=True)
    defects: Mapped[list[Defect]] = relationship(
        back_populates="inspection",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Defect.id",
    )
    reviews: Mapped[list[Review]] = relationship(
        back_populates="inspection", cascade="all, delete-orphan", passive_deletes=True
    )

    def __repr__(self) -> str:
        return (
            f"Inspection(id={self.id}, sha256={self.sha256[:12]!r}, status={self.status!r}, "
            f"verdict={self.verdict!r})"
        )


class Defect(Base):
    """One connected defect region of an inspection."""

    __tablename__ = "defects"
    __table_args__ = (
        Index("ix_defects_inspection_id", "inspection_id"),
        Index("ix_defects_class_name", "class_name"),
    )

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True)
    inspection_id: Mapped[int] = mapped_column(
        _BIG_ID, ForeignKey("inspections.id", ondelete="CASCADE")
    )
    class_index: Mapped[int]
    class_name: Mapped[str] = mapped_column(String(64))
    area: Mapped[int]
    bbox_x: Mapped[int]
    bbox_y: Mapped[int]
    bbox_w: Mapped[int]
    bbox_h: Mapped[int]
    centroid_x: Mapped[float] = mapped_column(Float)
    centroid_y: Mapped[float] = mapped_column(Float)
    perimeter: Mapped[float] = mapped_column(Float)
    mean_score: Mapped[float] = mapped_column(Float)
    max_score: Mapped[float] = mapped_column(Float)
    polygon: Mapped[list[Any]] = mapped_column(_JSON, default=list)

    inspection: Mapped[Inspection] = relationship(back_populates="defects")

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """(x, y, w, h) in pixels."""
        return (self.bbox_x, self.bbox_y, self.bbox_w, self.bbox_h)

    @property
    def centroid(self) -> tuple[float, float]:
        """(x, y) in pixels."""
        return (self.centroid_x, self.centroid_y)

    def __repr__(self) -> str:
        return f"Defect(id={self.id}, class_name={self.class_name!r}, area={self.area})"


class Review(Base):
    """An operator's verdict on an inspection, later used as training signal."""

    __tablename__ = "reviews"
    __table_args__ = (
        CheckConstraint(_in("decision", REVIEW_DECISIONS), name="decision"),
        Index("ix_reviews_inspection_id", "inspection_id"),
        Index("ix_reviews_used_in_training_run_id", "used_in_training_run_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    inspection_id: Mapped[int] = mapped_column(
        _BIG_ID, ForeignKey("inspections.id", ondelete="CASCADE")
    )
    decision: Mapped[str] = mapped_column(String(16))
    operator: Mapped[str | None] = mapped_column(String(128))
    corrected_mask_path: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    used_in_training_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("training_runs.id", ondelete="SET NULL")
    )
    #: What a console review said beyond the decision: the reviewer's verdict, changed classes,
    #: and the defects recomputed from a painted mask (None for reviews from the CLI).
    details: Mapped[dict[str, Any] | None] = mapped_column(_JSON)

    inspection: Mapped[Inspection] = relationship(back_populates="reviews")
    used_in_training_run: Mapped[TrainingRun | None] = relationship(back_populates="reviews")

    def __repr__(self) -> str:
        return f"Review(id={self.id}, inspection_id={self.inspection_id}, {self.decision!r})"


class RunMetric(Base):
    """Throughput and latency of one flow run over one time window."""

    __tablename__ = "run_metrics"
    __table_args__ = (
        UniqueConstraint("flow_run_id", "window_start"),
        Index("ix_run_metrics_window_start", "window_start"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    flow_run_id: Mapped[str] = mapped_column(String(64))
    flow_name: Mapped[str | None] = mapped_column(String(128))
    line: Mapped[str | None] = mapped_column(String(64))
    window_start: Mapped[datetime]
    window_end: Mapped[datetime]
    processed: Mapped[int] = mapped_column(default=0)
    rejected: Mapped[int] = mapped_column(default=0)
    throughput_per_s: Mapped[float | None] = mapped_column(Float)
    latency_p50_ms: Mapped[float | None] = mapped_column(Float)
    latency_p95_ms: Mapped[float | None] = mapped_column(Float)
    tiles: Mapped[int] = mapped_column(default=0, server_default="0")
    failed: Mapped[int] = mapped_column(default=0, server_default="0")
    defect_rate: Mapped[float | None] = mapped_column(Float)
    rejected_by_reason: Mapped[dict[str, Any] | None] = mapped_column(_JSON)
    model_version: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"RunMetric(flow_run_id={self.flow_run_id!r}, window_start={self.window_start})"


class Event(Base):
    """Something an operator should be able to find later: a model swap, a failed load, a crash.

    The line monitor records here what it cannot put in an inspection row (a champion whose
    file is broken, a switch to a new model, a batch that failed and was handed back).
    """

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_created_at", "created_at"),
        Index("ix_events_kind_created_at", "kind", "created_at"),
    )

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    level: Mapped[str] = mapped_column(String(16), default="info")
    line: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(128))
    flow_run_id: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any] | None] = mapped_column(_JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"Event(id={self.id}, kind={self.kind!r}, line={self.line!r})"


# --------------------------------------------------------------------------- operator console


class User(Base):
    """A local console user (``defectscan users add``): an argon2 hash, never a password."""

    __tablename__ = "users"
    __table_args__ = (CheckConstraint(_in("role", ROLES), name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(default=False)
    failed_logins: Mapped[int] = mapped_column(default=0)
    locked_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None]

    def __repr__(self) -> str:
        return f"User(name={self.name!r}, role={self.role!r}, disabled={self.disabled})"


class ConsoleSession(Base):
    """A console login: the sha256 of its cookie token, until it expires or is revoked."""

    __tablename__ = "sessions"
    __table_args__ = (Index("ix_sessions_user_id", "user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    ip: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(lazy="joined", innerjoin=True)

    def __repr__(self) -> str:
        return f"ConsoleSession(id={self.id}, user_id={self.user_id})"


class AuditEntry(Base):
    """One console action (or user change): who, what, when, from where."""

    __tablename__ = "audit"
    __table_args__ = (
        Index("ix_audit_created_at", "created_at"),
        Index("ix_audit_action_created_at", "action", "created_at"),
    )

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True)
    who: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    ip: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any] | None] = mapped_column(_JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"AuditEntry(id={self.id}, who={self.who!r}, action={self.action!r})"


class ThresholdRule(Base):
    """A line's threshold for one class, applied from the console; the newest version wins.

    It overrides the plant file's ``lines.<line>.thresholds``; monitors pick it up between
    batches.
    """

    __tablename__ = "threshold_rules"
    __table_args__ = (
        UniqueConstraint("line", "class_name", "version"),
        CheckConstraint("threshold >= 0 AND threshold <= 1", name="threshold"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    line: Mapped[str] = mapped_column(String(64))
    class_name: Mapped[str] = mapped_column(String(64))
    threshold: Mapped[float] = mapped_column(Float)
    version: Mapped[int]
    created_by: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return (
            f"ThresholdRule({self.line!r}, {self.class_name!r}, {self.threshold}, v{self.version})"
        )


class LineControl(Base):
    """Whether a line's monitor is paused (it stops claiming until resumed), who said so, when."""

    __tablename__ = "line_controls"

    line: Mapped[str] = mapped_column(String(64), primary_key=True)
    paused: Mapped[bool] = mapped_column(default=False)
    changed_by: Mapped[str | None] = mapped_column(String(64))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"LineControl(line={self.line!r}, paused={self.paused})"


# --------------------------------------------------------------------------- drift (issue 18)


class DriftReferenceRow(Base):
    """A camera's drift reference for one model version (``defectscan.drift.DriftReference``).

    The PCA mean, axes, whitening and thresholds are columns of their own; ``details`` keeps the
    rest (image statistics' medians and MADs, the novelty cut, output rates, PSI bin edges).
    The newest row for a model version, line and camera is the one in use.
    """

    __tablename__ = "drift_references"
    __table_args__ = (
        Index("ix_drift_references_lookup", "model_version", "line", "camera", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version: Mapped[str] = mapped_column(String(128))
    line: Mapped[str | None] = mapped_column(String(64))
    camera: Mapped[str | None] = mapped_column(String(64))
    k: Mapped[int]
    mean: Mapped[list[Any]] = mapped_column(_JSON)
    components: Mapped[list[Any]] = mapped_column(_JSON)
    whitening: Mapped[list[Any]] = mapped_column(_JSON)
    thresholds: Mapped[dict[str, Any]] = mapped_column(_JSON)
    details: Mapped[dict[str, Any]] = mapped_column(_JSON)
    n_images: Mapped[int]
    built_from: Mapped[datetime | None]
    built_to: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return (
            f"DriftReferenceRow(id={self.id}, {self.model_version!r}, {self.line!r}, "
            f"{self.camera!r}, n={self.n_images})"
        )


class DriftWindowRow(Base):
    """One closed drift window of a camera: its statistics, thresholds, state and hints."""

    __tablename__ = "drift_windows"
    __table_args__ = (
        CheckConstraint(_in("state", DRIFT_STATES), name="state"),
        Index("ix_drift_windows_camera_end", "line", "camera", "window_end"),
    )

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True)
    line: Mapped[str | None] = mapped_column(String(64))
    camera: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(128))
    reference_id: Mapped[int | None] = mapped_column(
        ForeignKey("drift_references.id", ondelete="SET NULL")
    )
    window_start: Mapped[datetime]
    window_end: Mapped[datetime]
    n: Mapped[int]
    statistics: Mapped[dict[str, Any]] = mapped_column(_JSON)
    thresholds: Mapped[dict[str, Any]] = mapped_column(_JSON)
    state: Mapped[str] = mapped_column(String(16))
    hints: Mapped[list[Any]] = mapped_column(_JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"DriftWindowRow({self.line!r}, {self.camera!r}, {self.window_end}, {self.state!r})"


class ReviewQueueItem(Base):
    """An image the review queue picked for an operator: why, with what probability, until when.

    ``inclusion_probability`` is exact for the random strata (``random_pass``, ``random_fail``)
    and 1 for the chosen ones; ``population`` is, for a random stratum, the number of passes
    (fails) of the line's day that the fill ``batch`` sampled from: with the reviews, they give
    the Horvitz-Thompson estimates of escapes and false rejects. An item is ``open`` until it
    is reviewed (``done``) or its ``expires_at`` passes (``expired``).
    """

    __tablename__ = "review_queue"
    __table_args__ = (
        CheckConstraint(_in("state", REVIEW_QUEUE_STATES), name="state"),
        CheckConstraint(_in("stratum", REVIEW_STRATA), name="stratum"),
        CheckConstraint(
            "inclusion_probability > 0 AND inclusion_probability <= 1", name="probability"
        ),
        # The console's and `review next`'s "next open item for a line".
        Index("ix_review_queue_line_state_expires_at", "line", "state", "expires_at", "id"),
        Index("ix_review_queue_state_expires_at", "state", "expires_at"),
        Index("ix_review_queue_inspection_id", "inspection_id"),
        Index("ix_review_queue_batch_stratum", "batch", "stratum"),
        # An image is queued at most once at a time.
        Index(
            "uq_review_queue_sha256_open",
            "sha256",
            unique=True,
            sqlite_where=text("state = 'open'"),
            postgresql_where=text("state = 'open'"),
        ),
    )

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True)
    inspection_id: Mapped[int] = mapped_column(
        _BIG_ID, ForeignKey("inspections.id", ondelete="CASCADE")
    )
    sha256: Mapped[str] = mapped_column(String(64))
    line: Mapped[str | None] = mapped_column(String(64))
    camera: Mapped[str | None] = mapped_column(String(64))
    stratum: Mapped[str] = mapped_column(String(32))
    score: Mapped[float] = mapped_column(Float)
    inclusion_probability: Mapped[float] = mapped_column(Float)
    population: Mapped[int | None]
    batch: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(128))
    selector_version: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="open")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    done_at: Mapped[datetime | None]
    review_id: Mapped[int | None] = mapped_column(ForeignKey("reviews.id", ondelete="SET NULL"))

    def __repr__(self) -> str:
        return (
            f"ReviewQueueItem(id={self.id}, inspection_id={self.inspection_id}, "
            f"{self.stratum!r}, {self.state!r})"
        )
