"""Controller benchmark: cost per episode, and episodes to a hidden target for PPO, REINFORCE, random.

    python -m bench.controller [--targets 5] [--budget 3000]

Prints the time to sample one architecture, the time of one policy update (per batch and per episode),
and how many episodes each method needs to propose a hidden target exactly, with reward = fraction of
matching decisions (see ``bench/learning_task.py``). All methods run in this one process.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from bench.learning_task import episodes_to_target, random_episodes_to_target
from controller import ControllerConfig
from controller.controller import Controller
from search_spaces.space import SearchSpace


def time_episode_costs(algorithm: str, episodes: int = 400) -> tuple[float, float, int]:
    """Mean seconds per proposal and per update, and the batch size, over ``episodes`` episodes."""
    controller = Controller(ControllerConfig(algorithm=algorithm, seed_architecture=None))
    rng = random.Random(0)
    sample_seconds = update_seconds = 0.0
    updates = 0
    for _ in range(episodes):
        start = time.perf_counter()
        proposal, _ = controller.propose()
        sample_seconds += time.perf_counter() - start
        start = time.perf_counter()
        stats = controller.report(proposal.id, rng.random())
        if stats is not None:
            update_seconds += time.perf_counter() - start
            updates += 1
    return sample_seconds / episodes, update_seconds / max(updates, 1), controller.config.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=5, help="hidden targets per method")
    parser.add_argument("--budget", type=int, default=3000, help="episodes allowed per target")
    args = parser.parse_args()
    torch.set_num_threads(1)
    space = SearchSpace()

    print(f"torch {torch.__version__}, 1 thread, search space: {space.num_cells} cells, levels {space.levels}")
    print("\nper-episode controller cost")
    print(f"{'algorithm':10} {'sample ms':>10} {'update ms':>10} {'batch':>6} {'update ms/episode':>18}")
    for algorithm in ("ppo", "reinforce"):
        sample, update, batch = time_episode_costs(algorithm)
        print(f"{algorithm:10} {sample * 1e3:10.2f} {update * 1e3:10.2f} {batch:6d} {update / batch * 1e3:18.2f}")

    print(f"\nepisodes to propose a hidden target exactly ({args.targets} targets, budget {args.budget})")
    print(f"{'method':10} {'found':>6} {'median':>8} {'episodes per target'}")
    for method in ("ppo", "reinforce", "random"):
        results: list[int | None] = []
        start = time.perf_counter()
        for seed in range(args.targets):
            target = space.random_architecture(random.Random(1000 + seed))
            if method == "random":
                episodes, _ = random_episodes_to_target(space, target, args.budget, seed=seed)
            else:
                config = ControllerConfig(algorithm=method, seed_architecture=None, seed=seed)
                episodes = episodes_to_target(Controller(config), target, args.budget)
            results.append(episodes)
        found = [r for r in results if r is not None]
        median = statistics.median(r if r is not None else args.budget + 1 for r in results)
        shown = " ".join(str(r) if r is not None else "-" for r in results)
        median_text = f"{median:.0f}" if median <= args.budget else f">{args.budget}"
        print(f"{method:10} {len(found):3d}/{len(results):<2d} {median_text:>8} {shown}"
              f"   ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
