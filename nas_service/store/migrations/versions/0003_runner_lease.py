"""The runner's lease on its search, and an index to find an episode by its proposal.

A runner holds its search by a lease that it renews every few seconds: its owner (``host:pid``), a
random token that fences every write of the runner, when it was taken, its last heartbeat and when it
expires without another. A resume takes over only an expired lease, in one compare-and-set.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
COLUMNS = ("lease_owner", "lease_token", "lease_acquired_at", "lease_heartbeat_at", "lease_expires_at")


def upgrade() -> None:
    op.add_column("searches", sa.Column("lease_owner", sa.String(255), nullable=True))
    op.add_column("searches", sa.Column("lease_token", sa.String(64), nullable=True))
    for column in COLUMNS[2:]:
        op.add_column("searches", sa.Column(column, TIMESTAMP, nullable=True))
    op.create_index("ix_episodes_search_id_proposal_id", "episodes", ["search_id", "proposal_id"])


def downgrade() -> None:
    op.drop_index("ix_episodes_search_id_proposal_id", table_name="episodes")
    for column in reversed(COLUMNS):  # SQLite drops columns natively since 3.35
        op.drop_column("searches", column)
