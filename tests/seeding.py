"""Stores filled with realistic searches, for the API tests, the browser test and ``bench.api``.

Episodes go through the store's real lifecycle (add, start, complete / cache / fail, checkpoints), so
counters, best-so-far and entropy history are what a runner would leave behind.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from nas_service.search_config import SearchConfig
from nas_service.store import EpisodeRecord, EpisodeStore
from search_spaces import Architecture, nasfpn
from search_spaces.space import SearchSpace
from tests.test_proxy import tiny_proxy_config

LEVELS = (2, 3, 4, 5, 6)
UPDATE_EVERY = 8
NOISE = 0.01
"""The proxy noise seeded searches carry."""


def search_config(data_root: Path, episodes: int, **changes) -> SearchConfig:
    """A tiny search: a 2-iteration proxy (``train={...}`` overrides) on a small synthetic set."""
    train = {"iterations": 2, **changes.pop("train", {})}
    config = {
        "controller": {"levels": list(LEVELS), "batch_size": 2, **changes.pop("controller", {})},
        "proxy": tiny_proxy_config(data_root, **train).model_dump(mode="json"),
        "budget": {"episodes": episodes},
        "resources": {"concurrency": 1, "cpus_per_trial": 1},
    }
    return SearchConfig.model_validate({**config, **changes})


def seed_search(
    store: EpisodeStore, name: str, episodes: int, data_root: Path, seed: int = 0, status: str = "completed"
) -> int:
    """A search with ``episodes`` episodes, left in ``status`` ("running": pollers keep watching); returns its id."""
    noise = {"paired": NOISE, "cells": {"fpn": 0.2}, "source": "seeding"}
    config = search_config(data_root, episodes, reward={"metric": "AP", "noise": noise})
    search = store.create_search(name, config.model_dump(mode="json"), budget_episodes=episodes)
    store.set_search_status(search.id, "running")
    rng = random.Random(seed)
    pool: list[dict] = []
    for _ in range(episodes):
        add_episode(store, search.id, rng, pool)
    store.set_search_status(search.id, status)
    return search.id


def add_episode(store: EpisodeStore, search_id: int, rng: random.Random, pool: list[dict]) -> EpisodeRecord:
    """One more finished episode: first the seed architecture (as a runner proposes it), then a new cell
    or (ever more often) a repeat, a reward that improves."""
    number = store.get_search(search_id).num_episodes
    repeat = pool and rng.random() < min(0.8, number / 500)
    arch = rng.choice(pool) if repeat else SearchSpace(LEVELS).random_architecture(rng).to_dict()
    if number == 0:
        arch = nasfpn(LEVELS).to_dict()
    if not repeat:
        pool.append(arch)
    arch_hash = Architecture.from_dict(arch).canonical_hash()
    store.add_episode(search_id, number, arch, arch_hash)
    reward = max(0.0, 0.2 + 0.15 * (1 - math.exp(-number / 150)) + rng.gauss(0, 0.03))
    metrics = {"AP": reward, "AP50": min(1.0, reward * 1.8), "AP75": reward * 0.9}
    trained = store.find_completed_by_hash(search_id, arch_hash) if repeat else None
    if trained is not None:
        result = store.record_cached(search_id, number, trained.reward, trained.metrics, trained.flops, trained.params)
    else:
        store.start_episode(search_id, number, worker=f"node-{number % 2}")
        if rng.random() < 0.05:
            result = store.fail_episode(search_id, number, "RuntimeError: loss is nan at iteration 3", reward=0.0)
        else:
            flops = rng.randrange(5 * 10**9, 20 * 10**9)
            result = store.complete_episode(
                search_id,
                number,
                reward,
                metrics,
                flops=flops,
                params=flops // 3000,
                train_seconds=rng.uniform(60, 180),
            )
    if (number + 1) % UPDATE_EVERY == 0:
        update = (number + 1) // UPDATE_EVERY
        entropy = 40.0 * math.exp(-update / 40) + rng.gauss(0, 0.3)
        store.save_checkpoint(search_id, update, number + 1, b"state", entropy=entropy, keep_last=3)
    return result


def start_new_episode(store: EpisodeStore, search_id: int, rng: random.Random, worker: str = "node-0") -> int:
    """Propose a new random cell and start training it, as a runner does; returns the episode's number."""
    number = store.get_search(search_id).num_episodes
    arch = SearchSpace(LEVELS).random_architecture(rng)
    store.add_episode(search_id, number, arch.to_dict(), arch.canonical_hash())
    store.start_episode(search_id, number, worker=worker)
    return number
