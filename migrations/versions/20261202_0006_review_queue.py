"""The review queue: images picked for an operator, by stratum, with inclusion probabilities.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "review_queue",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("inspection_id", BIG_ID, nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("line", sa.String(length=64), nullable=True),
        sa.Column("camera", sa.String(length=64), nullable=True),
        sa.Column("stratum", sa.String(length=32), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("inclusion_probability", sa.Float(), nullable=False),
        sa.Column("population", sa.Integer(), nullable=True),
        sa.Column("batch", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("selector_version", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("review_id", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "state IN ('open', 'done', 'expired')", name=op.f("ck_review_queue_state")
        ),
        sa.CheckConstraint(
            "stratum IN ('close_call', 'novelty', 'class_balance', 'random_pass', "
            "'random_fail', 'flagged')",
            name=op.f("ck_review_queue_stratum"),
        ),
        sa.CheckConstraint(
            "inclusion_probability > 0 AND inclusion_probability <= 1",
            name=op.f("ck_review_queue_probability"),
        ),
        sa.ForeignKeyConstraint(
            ["inspection_id"],
            ["inspections.id"],
            name=op.f("fk_review_queue_inspection_id_inspections"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["review_id"],
            ["reviews.id"],
            name=op.f("fk_review_queue_review_id_reviews"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_queue")),
    )
    op.create_index(
        "ix_review_queue_line_state_expires_at",
        "review_queue",
        ["line", "state", "expires_at", "id"],
        unique=False,
    )
    op.create_index(
        "ix_review_queue_state_expires_at", "review_queue", ["state", "expires_at"], unique=False
    )
    op.create_index(
        "ix_review_queue_inspection_id", "review_queue", ["inspection_id"], unique=False
    )
    op.create_index(
        "ix_review_queue_batch_stratum", "review_queue", ["batch", "stratum"], unique=False
    )
    op.create_index(
        "uq_review_queue_sha256_open",
        "review_queue",
        ["sha256"],
        unique=True,
        sqlite_where=sa.text("state = 'open'"),
        postgresql_where=sa.text("state = 'open'"),
    )


def downgrade() -> None:
    op.drop_index("uq_review_queue_sha256_open", table_name="review_queue")
    op.drop_index("ix_review_queue_batch_stratum", table_name="review_queue")
    op.drop_index("ix_review_queue_inspection_id", table_name="review_queue")
    op.drop_index("ix_review_queue_state_expires_at", table_name="review_queue")
    op.drop_index("ix_review_queue_line_state_expires_at", table_name="review_queue")
    op.drop_table("review_queue")
