"""Initial schema: searches, episodes, controller_checkpoints.

Revision ID: 0001
Revises:

Written by hand and frozen: later schema changes go into new revisions, never into this one.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)
SEARCH_STATUSES = ("created", "running", "stopping", "stopped", "completed", "failed")
EPISODE_STATUSES = ("proposed", "running", "completed", "failed", "cached")


def _status_check(name: str, statuses: tuple[str, ...]) -> sa.CheckConstraint:
    allowed = ", ".join(f"'{status}'" for status in statuses)
    return sa.CheckConstraint(f"status IN ({allowed})", name=op.f(name))


def upgrade() -> None:
    op.create_table(
        "searches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("budget_episodes", sa.Integer(), nullable=True),
        sa.Column("budget_unique", sa.Integer(), nullable=True),
        sa.Column("budget_seconds", sa.Float(), nullable=True),
        sa.Column("archived", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("num_episodes", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("num_completed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("num_failed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("num_cached", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("num_unique", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("best_reward", sa.Float(), nullable=True),
        sa.Column("best_episode_number", sa.Integer(), nullable=True),
        sa.Column("last_entropy", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_searches")),
        sa.UniqueConstraint("name", name=op.f("uq_searches_name")),
        _status_check("ck_searches_status", SEARCH_STATUSES),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "episodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("search_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("proposal_id", sa.Integer(), nullable=False),
        sa.Column("architecture", sa.JSON(), nullable=False),
        sa.Column("arch_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reward", sa.Float(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("flops", sa.BigInteger(), nullable=True),
        sa.Column("params", sa.BigInteger(), nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("proposed_at", TIMESTAMP, nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("train_seconds", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_episodes")),
        sa.ForeignKeyConstraint(
            ["search_id"], ["searches.id"], name=op.f("fk_episodes_search_id_searches"), ondelete="CASCADE"
        ),
        sa.UniqueConstraint("search_id", "number", name=op.f("uq_episodes_search_id_number")),
        _status_check("ck_episodes_status", EPISODE_STATUSES),
    )
    op.create_index("ix_episodes_search_id_status", "episodes", ["search_id", "status"])
    op.create_index("ix_episodes_search_id_arch_hash", "episodes", ["search_id", "arch_hash"])
    op.create_index("ix_episodes_search_id_reward", "episodes", ["search_id", "reward"])
    op.create_table(
        "controller_checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("search_id", sa.Integer(), nullable=False),
        sa.Column("update_number", sa.Integer(), nullable=False),
        sa.Column("episodes_reported", sa.Integer(), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.Column("entropy", sa.Float(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_controller_checkpoints")),
        sa.ForeignKeyConstraint(
            ["search_id"],
            ["searches.id"],
            name=op.f("fk_controller_checkpoints_search_id_searches"),
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "search_id", "update_number", name=op.f("uq_controller_checkpoints_search_id_update_number")
        ),
    )


def downgrade() -> None:
    op.drop_table("controller_checkpoints")
    op.drop_index("ix_episodes_search_id_reward", table_name="episodes")
    op.drop_index("ix_episodes_search_id_arch_hash", table_name="episodes")
    op.drop_index("ix_episodes_search_id_status", table_name="episodes")
    op.drop_table("episodes")
    op.drop_table("searches")
