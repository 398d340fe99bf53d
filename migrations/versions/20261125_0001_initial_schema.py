"""Initial schema: model registry, training runs, inspections, defects, reviews, run metrics.

Revision ID: 0001
Revises:
Create Date: 2026-11-25 09:18:05.743269
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# JSONB on PostgreSQL, JSON text on SQLite; 64-bit keys on PostgreSQL, rowid on SQLite.
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "run_metrics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("flow_run_id", sa.String(length=64), nullable=False),
        sa.Column("flow_name", sa.String(length=128), nullable=True),
        sa.Column("line", sa.String(length=64), nullable=True),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("throughput_per_s", sa.Float(), nullable=True),
        sa.Column("latency_p50_ms", sa.Float(), nullable=True),
        sa.Column("latency_p95_ms", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_metrics")),
        sa.UniqueConstraint(
            "flow_run_id", "window_start", name=op.f("uq_run_metrics_flow_run_id_window_start")
        ),
    )
    op.create_index(
        op.f("ix_run_metrics_window_start"), "run_metrics", ["window_start"], unique=False
    )

    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.String(length=128), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("params", JSON_TYPE, nullable=True),
        sa.Column("dataset_stats", JSON_TYPE, nullable=True),
        sa.Column("metrics", JSON_TYPE, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_training_runs_status"),
        ),
        sa.CheckConstraint(
            "trigger IN ('scheduled', 'operator', 'cli', 'drift')",
            name=op.f("ck_training_runs_trigger"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_runs")),
    )
    op.create_index(
        op.f("ix_training_runs_status_created_at"),
        "training_runs",
        ["status", "created_at"],
        unique=False,
    )

    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("checkpoint_path", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("activation", sa.String(length=16), nullable=False),
        sa.Column("class_names", JSON_TYPE, nullable=False),
        sa.Column("spec", JSON_TYPE, nullable=False),
        sa.Column("metrics", JSON_TYPE, nullable=True),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("training_run_id", sa.Integer(), nullable=True),
        sa.Column("dataset_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "activation IN ('sigmoid', 'softmax')", name=op.f("ck_model_versions_activation")
        ),
        sa.CheckConstraint(
            "status IN ('candidate', 'champion', 'retired')", name=op.f("ck_model_versions_status")
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["model_versions.id"],
            name=op.f("fk_model_versions_parent_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["training_run_id"],
            ["training_runs.id"],
            name=op.f("fk_model_versions_training_run_id_training_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("version", name=op.f("uq_model_versions_version")),
    )
    op.create_index(
        op.f("ix_model_versions_name_status"), "model_versions", ["name", "status"], unique=False
    )
    op.create_index(
        op.f("uq_model_versions_champion_name"),
        "model_versions",
        ["name"],
        unique=True,
        sqlite_where=sa.text("status = 'champion'"),
        postgresql_where=sa.text("status = 'champion'"),
    )

    op.create_table(
        "inspections",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("verdict", sa.String(length=8), nullable=True),
        sa.Column("camera", sa.String(length=64), nullable=True),
        sa.Column("line", sa.String(length=64), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("channels", sa.Integer(), nullable=True),
        sa.Column("captured_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("timings_ms", JSON_TYPE, nullable=False),
        sa.Column("total_ms", sa.Float(), nullable=True),
        sa.Column("n_defects", sa.Integer(), nullable=False),
        sa.Column("error_kind", sa.String(length=32), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("mask_path", sa.Text(), nullable=True),
        sa.Column("overlay_path", sa.Text(), nullable=True),
        sa.Column("source", sa.String(length=32), nullable=True),
        sa.Column("source_id", sa.String(length=256), nullable=True),
        sa.CheckConstraint(
            "(status = 'ok' AND verdict IN ('pass', 'fail')) OR (status = 'rejected' AND verdict IS NULL AND error_kind IS NOT NULL)",
            name=op.f("ck_inspections_verdict"),
        ),
        sa.CheckConstraint("status IN ('ok', 'rejected')", name=op.f("ck_inspections_status")),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_inspections_model_version_id_model_versions"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inspections")),
        sa.UniqueConstraint(
            "sha256", "model_version_id", name=op.f("uq_inspections_sha256_model_version_id")
        ),
    )
    op.create_index(
        op.f("ix_inspections_camera_finished_at"),
        "inspections",
        ["camera", "finished_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_inspections_finished_at"), "inspections", ["finished_at"], unique=False
    )
    op.create_index(
        op.f("ix_inspections_line_finished_at"),
        "inspections",
        ["line", "finished_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_inspections_model_version_id_finished_at"),
        "inspections",
        ["model_version_id", "finished_at"],
        unique=False,
    )
    op.create_index(op.f("ix_inspections_status"), "inspections", ["status"], unique=False)

    op.create_table(
        "defects",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("inspection_id", BIG_ID, nullable=False),
        sa.Column("class_index", sa.Integer(), nullable=False),
        sa.Column("class_name", sa.String(length=64), nullable=False),
        sa.Column("area", sa.Integer(), nullable=False),
        sa.Column("bbox_x", sa.Integer(), nullable=False),
        sa.Column("bbox_y", sa.Integer(), nullable=False),
        sa.Column("bbox_w", sa.Integer(), nullable=False),
        sa.Column("bbox_h", sa.Integer(), nullable=False),
        sa.Column("centroid_x", sa.Float(), nullable=False),
        sa.Column("centroid_y", sa.Float(), nullable=False),
        sa.Column("perimeter", sa.Float(), nullable=False),
        sa.Column("mean_score", sa.Float(), nullable=False),
        sa.Column("max_score", sa.Float(), nullable=False),
        sa.Column("polygon", JSON_TYPE, nullable=False),
        sa.ForeignKeyConstraint(
            ["inspection_id"],
            ["inspections.id"],
            name=op.f("fk_defects_inspection_id_inspections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_defects")),
    )
    op.create_index(op.f("ix_defects_class_name"), "defects", ["class_name"], unique=False)
    op.create_index(op.f("ix_defects_inspection_id"), "defects", ["inspection_id"], unique=False)

    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("inspection_id", BIG_ID, nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("operator", sa.String(length=128), nullable=True),
        sa.Column("corrected_mask_path", sa.Text(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_in_training_run_id", sa.Integer(), nullable=True),
        sa.CheckConstraint("decision IN ('confirm', 'reject')", name=op.f("ck_reviews_decision")),
        sa.ForeignKeyConstraint(
            ["inspection_id"],
            ["inspections.id"],
            name=op.f("fk_reviews_inspection_id_inspections"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["used_in_training_run_id"],
            ["training_runs.id"],
            name=op.f("fk_reviews_used_in_training_run_id_training_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reviews")),
    )
    op.create_index(op.f("ix_reviews_inspection_id"), "reviews", ["inspection_id"], unique=False)
    op.create_index(
        op.f("ix_reviews_used_in_training_run_id"),
        "reviews",
        ["used_in_training_run_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_reviews_used_in_training_run_id"), table_name="reviews")
    op.drop_index(op.f("ix_reviews_inspection_id"), table_name="reviews")

    op.drop_table("reviews")
    op.drop_index(op.f("ix_defects_inspection_id"), table_name="defects")
    op.drop_index(op.f("ix_defects_class_name"), table_name="defects")

    op.drop_table("defects")
    op.drop_index(op.f("ix_inspections_status"), table_name="inspections")
    op.drop_index(op.f("ix_inspections_model_version_id_finished_at"), table_name="inspections")
    op.drop_index(op.f("ix_inspections_line_finished_at"), table_name="inspections")
    op.drop_index(op.f("ix_inspections_finished_at"), table_name="inspections")
    op.drop_index(op.f("ix_inspections_camera_finished_at"), table_name="inspections")

    op.drop_table("inspections")
    op.drop_index(
        op.f("uq_model_versions_champion_name"),
        table_name="model_versions",
        sqlite_where=sa.text("status = 'champion'"),
        postgresql_where=sa.text("status = 'champion'"),
    )
    op.drop_index(op.f("ix_model_versions_name_status"), table_name="model_versions")

    op.drop_table("model_versions")
    op.drop_index(op.f("ix_training_runs_status_created_at"), table_name="training_runs")

    op.drop_table("training_runs")
    op.drop_index(op.f("ix_run_metrics_window_start"), table_name="run_metrics")

    op.drop_table("run_metrics")
