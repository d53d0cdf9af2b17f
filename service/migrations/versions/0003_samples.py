"""A job's uploaded samples: ``data_key`` (samples for calibration and the accuracy report) and ``eval_key``
(held-out samples for the accuracy report).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("data_key", sa.String(255), nullable=True))
    op.add_column("jobs", sa.Column("eval_key", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("eval_key")
        batch.drop_column("data_key")
