"""Line monitor: events table, richer run metrics.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("line", sa.String(length=64), nullable=True),
        sa.Column("model_version", sa.String(length=128), nullable=True),
        sa.Column("flow_run_id", sa.String(length=64), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("details", JSON_TYPE, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index(op.f("ix_events_created_at"), "events", ["created_at"], unique=False)
    op.create_index(
        op.f("ix_events_kind_created_at"), "events", ["kind", "created_at"], unique=False
    )
    with op.batch_alter_table("run_metrics") as batch:
        batch.add_column(sa.Column("tiles", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("failed", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("defect_rate", sa.Float(), nullable=True))
        batch.add_column(sa.Column("rejected_by_reason", JSON_TYPE, nullable=True))
        batch.add_column(sa.Column("model_version", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("run_metrics") as batch:
        batch.drop_column("model_version")
        batch.drop_column("rejected_by_reason")
        batch.drop_column("defect_rate")
        batch.drop_column("failed")
        batch.drop_column("tiles")
    op.drop_index(op.f("ix_events_kind_created_at"), table_name="events")
    op.drop_index(op.f("ix_events_created_at"), table_name="events")
    op.drop_table("events")
