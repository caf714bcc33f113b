"""Search benchmark: how much of a search's wall time is spent outside proxy training.

    python -m bench.search [--episodes 8] [--cpu-episodes 3]

Three runs, each a real search on a local Ray with an SQLite store in a temporary folder:

1. ``configs/search/demo.yaml`` (the quick proxy): wall time against the summed proxy time.
2. The same search with a trivial trainable that returns at once: what is left is the search's own
   cost per episode (controller, Ray Tune scheduling, store writes).
3. ``configs/search/cpu.yaml`` (the CPU proxy) for a few episodes: episodes per hour on this machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from ray import tune

from nas_service.search_config import SearchConfig, load_search_config
from nas_service.store import EpisodeStore
from nas_service.tune_adapter import proxy_trial, run_search


def instant_trial(config: dict[str, Any]) -> None:
    """A trainable that trains nothing: a fixed result, so only the search's own work is timed."""
    result = {"status": "completed", "metrics": {"AP": 0.1, "AP50": 0.2}, "neck_flops": 1, "neck_params": 1,
              "wall_time": 0.0, "error": None}
    tune.report({"episode": config["episode"], "worker": "instant", "proxy": json.dumps(result)})


def timed_search(config: SearchConfig, episodes: int, trainable=proxy_trial) -> tuple[float, float, int]:
    """(wall seconds, summed proxy seconds, episodes) of one search run from scratch."""
    config = config.model_copy(update={"budget": config.budget.model_copy(update={"episodes": episodes})})
    with tempfile.TemporaryDirectory() as folder:
        store = EpisodeStore(f"sqlite:///{Path(folder) / 'nas.db'}")
        search = store.create_search("bench", config.model_dump(mode="json"), budget_episodes=episodes)
        start = time.perf_counter()
        run_search(store, search.id, storage=Path(folder) / "ray", trainable=trainable)
        wall = time.perf_counter() - start
        trained = sum(e.train_seconds or 0.0 for e in store.list_episodes(search.id))
        done = store.get_search(search.id).num_episodes
        store.close()
    return wall, trained, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--cpu-episodes", type=int, default=3)
    args = parser.parse_args()
    demo = load_search_config(Path("configs/search/demo.yaml"))

    print(f"1. demo proxy, {args.episodes} episodes")
    wall, trained, done = timed_search(demo, args.episodes)
    print(f"   wall {wall:.1f} s, proxy training {trained:.1f} s, outside training {wall - trained:.1f} s "
          f"({(wall - trained) / wall:.1%} of wall time, {(wall - trained) / done:.2f} s per episode)")

    print(f"2. instant trainable, {args.episodes} episodes")
    wall, _, done = timed_search(demo, args.episodes, trainable=instant_trial)
    print(f"   wall {wall:.1f} s: {wall / done:.2f} s per episode of search overhead (Ray start included)")

    print(f"3. CPU proxy (configs/search/cpu.yaml), {args.cpu_episodes} episodes")
    cpu = load_search_config(Path("configs/search/cpu.yaml"))
    wall, trained, done = timed_search(cpu, args.cpu_episodes)
    print(f"   wall {wall:.1f} s, proxy training {trained:.1f} s ({(wall - trained) / wall:.1%} outside): "
          f"{3600 * done / wall:.1f} episodes per hour")


if __name__ == "__main__":
    main()
