"""Drift monitoring: a reference per model version and camera, and closed drift windows.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "drift_references",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("line", sa.String(length=64), nullable=True),
        sa.Column("camera", sa.String(length=64), nullable=True),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("mean", JSON_TYPE, nullable=False),
        sa.Column("components", JSON_TYPE, nullable=False),
        sa.Column("whitening", JSON_TYPE, nullable=False),
        sa.Column("thresholds", JSON_TYPE, nullable=False),
        sa.Column("details", JSON_TYPE, nullable=False),
        sa.Column("n_images", sa.Integer(), nullable=False),
        sa.Column("built_from", sa.DateTime(timezone=True), nullable=True),
        sa.Column("built_to", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_references")),
    )
    op.create_index(
        "ix_drift_references_lookup",
        "drift_references",
        ["model_version", "line", "camera", "created_at"],
        unique=False,
    )
    op.create_table(
        "drift_windows",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("line", sa.String(length=64), nullable=True),
        sa.Column("camera", sa.String(length=64), nullable=True),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("reference_id", sa.Integer(), nullable=True),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("statistics", JSON_TYPE, nullable=False),
        sa.Column("thresholds", JSON_TYPE, nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("hints", JSON_TYPE, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('ok', 'warning', 'critical')", name=op.f("ck_drift_windows_state")
        ),
        sa.ForeignKeyConstraint(
            ["reference_id"],
            ["drift_references.id"],
            name=op.f("fk_drift_windows_reference_id_drift_references"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_windows")),
    )
    op.create_index(
        "ix_drift_windows_camera_end",
        "drift_windows",
        ["line", "camera", "window_end"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_drift_windows_camera_end", table_name="drift_windows")
    op.drop_table("drift_windows")
    op.drop_index("ix_drift_references_lookup", table_name="drift_references")
    op.drop_table("drift_references")
