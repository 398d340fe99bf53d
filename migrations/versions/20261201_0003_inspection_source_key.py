"""Inspections: one row per delivery, keyed on the source identity under any model version.

Adds ``inspections.source_key`` (a delivery's identity at its source: the stream entry, or the
camera file's name, size and mtime). Deliveries are unique on ``(source_key, sha256)``, whatever
model inspected them; rows without a source identity (``inspect --store``, ``batch``) keep the
old uniqueness on ``(sha256, model_version_id)`` through a partial unique index. Existing rows
get no source key (it cannot be rebuilt) and keep the old rule.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNKEYED = "uq_inspections_sha256_model_version_id_unkeyed"


def upgrade() -> None:
    # SQLite cannot drop a table constraint in place: batch mode copies the table (in the
    # migration's transaction); PostgreSQL alters it directly.
    with op.batch_alter_table("inspections") as batch:
        batch.add_column(sa.Column("source_key", sa.String(length=512), nullable=True))
        batch.drop_constraint("uq_inspections_sha256_model_version_id", type_="unique")
        batch.create_unique_constraint(
            op.f("uq_inspections_source_key_sha256"), ["source_key", "sha256"]
        )
    op.create_index(
        _UNKEYED,
        "inspections",
        ["sha256", "model_version_id"],
        unique=True,
        sqlite_where=sa.text("source_key IS NULL"),
        postgresql_where=sa.text("source_key IS NULL"),
    )


def downgrade() -> None:
    bind = op.get_bind()
    repeated = bind.execute(
        sa.text(
            "SELECT count(*) FROM (SELECT sha256, model_version_id FROM inspections "
            "GROUP BY sha256, model_version_id HAVING count(*) > 1) AS repeated"
        )
    ).scalar_one()
    if repeated:
        msg = (
            f"cannot downgrade below 0003: {repeated} image(s) have several rows under one model "
            "version (identical parts delivered separately), which revision 0002's unique "
            "(sha256, model_version_id) forbids; delete the extra rows first or stay at 0003"
        )
        raise RuntimeError(msg)
    op.drop_index(
        _UNKEYED,
        table_name="inspections",
        sqlite_where=sa.text("source_key IS NULL"),
        postgresql_where=sa.text("source_key IS NULL"),
    )
    with op.batch_alter_table("inspections") as batch:
        batch.drop_constraint(op.f("uq_inspections_source_key_sha256"), type_="unique")
        batch.create_unique_constraint(
            op.f("uq_inspections_sha256_model_version_id"), ["sha256", "model_version_id"]
        )
        batch.drop_column("source_key")
