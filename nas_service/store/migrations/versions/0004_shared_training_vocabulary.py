"""shared_training_vocabulary: stored search configs name the proxy's settings as the full trainer does.

The proxy's training input sizes are ``proxy.train.short_sides`` and ``max_size`` (were
``train_short_sides`` and ``train_max_size``); its held-out evaluation has a ``proxy.test`` section
(``short_side``, ``max_size``, ``batch_size``; were ``train.eval_short_side``, ``eval_max_size`` and
``eval_batch_size``); the test-only ``train.inject_nonfinite_loss_at`` is gone. Every value is kept.
A downgrade restores the old names and drops what the old vocabulary has no name for (the schedule's
kind and steps, the dataset's sampler, workers and Objects365 paths, and the proxy's measured noise a
search may carry in ``reward.noise``).

Revision ID: 0004
Revises: 0003
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

RENAMED = {
    "train_short_sides": ("train", "short_sides"),
    "train_max_size": ("train", "max_size"),
    "eval_short_side": ("test", "short_side"),
    "eval_max_size": ("test", "max_size"),
    "eval_batch_size": ("test", "batch_size"),
}
"""Old name in ``proxy.train`` -> section and name now."""
UNNAMED_BEFORE = {"train": ("schedule", "steps", "gamma"), "dataset": ("sampler", "num_workers", "objects365_v2_paths")}
NEW_IN_REWARD = ("noise",)
"""Added to a search's ``reward`` with this revision's code; the old code refuses unknown keys."""

searches = sa.table("searches", sa.column("id", sa.Integer), sa.column("config", sa.JSON))


def upgrade() -> None:
    _rewrite(_shared_config)


def downgrade() -> None:
    _rewrite(_old_config)


def _rewrite(convert) -> None:
    connection = op.get_bind()
    for search_id, config in connection.execute(sa.select(searches.c.id, searches.c.config)).all():
        changed = convert(config) if isinstance(config, dict) else config
        if changed != config:
            connection.execute(searches.update().where(searches.c.id == search_id).values(config=changed))


def _shared_config(config: dict[str, Any]) -> dict[str, Any]:
    proxy = config.get("proxy")
    return {**config, "proxy": _shared_names(proxy)} if _has_train(proxy) else config


def _old_config(config: dict[str, Any]) -> dict[str, Any]:
    changed = dict(config)
    if _has_train(proxy := config.get("proxy")):
        changed["proxy"] = _old_names(proxy)
    if isinstance(reward := config.get("reward"), dict):
        changed["reward"] = {key: value for key, value in reward.items() if key not in NEW_IN_REWARD}
    return changed


def _has_train(proxy: Any) -> bool:
    return isinstance(proxy, dict) and isinstance(proxy.get("train"), dict)


def _shared_names(proxy: dict[str, Any]) -> dict[str, Any]:
    sections = {"train": dict(proxy["train"]), "test": dict(proxy.get("test") or {})}
    sections["train"].pop("inject_nonfinite_loss_at", None)
    for old, (section, new) in RENAMED.items():
        if old in sections["train"]:
            sections[section][new] = sections["train"].pop(old)
    return {**proxy, **{name: fields for name, fields in sections.items() if fields}}


def _old_names(proxy: dict[str, Any]) -> dict[str, Any]:
    proxy = dict(proxy)
    sections = {"train": dict(proxy["train"]), "test": dict(proxy.pop("test", None) or {})}
    for old, (section, new) in RENAMED.items():
        if new in sections[section]:
            sections["train"][old] = sections[section].pop(new)
    proxy["train"] = sections["train"]
    for section, names in UNNAMED_BEFORE.items():
        if isinstance(proxy.get(section), dict):
            proxy[section] = {key: value for key, value in proxy[section].items() if key not in names}
    return proxy
