"""controller_updates: the controller's entropy after every update, kept for the whole search.

Checkpoints are pruned to the last few, but the dashboard draws entropy over the whole search, so each
update also leaves this small row behind.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "controller_updates",
        sa.Column("search_id", sa.Integer(), nullable=False),
        sa.Column("update_number", sa.Integer(), nullable=False),
        sa.Column("episodes_reported", sa.Integer(), nullable=False),
        sa.Column("entropy", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("search_id", "update_number", name=op.f("pk_controller_updates")),
        sa.ForeignKeyConstraint(
            ["search_id"], ["searches.id"], name=op.f("fk_controller_updates_search_id_searches"), ondelete="CASCADE"
        ),
    )


def downgrade() -> None:
    op.drop_table("controller_updates")
