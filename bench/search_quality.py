"""Search quality: the best reward found within one episode budget by the seeded controller, the same
controller unseeded, and random sampling, on a real proxy.

    python -m bench.search_quality [-c configs/search/demo.yaml] [--episodes 20] [--repeats 1]
                                   [--fidelity REPORT.json] [--threads N] [--json out.json]

Each arm proposes ``--episodes`` cells, one after the other as a search with one trial at a time does,
and learns from each reward before the next proposal. The search config gives the controller, the
proxy and the reward. Every episode of a search is trained under the same seed, so a cell's reward
is a function of the cell: the arms share one cache of trained cells, and only which cells they
propose differs. ``--repeats`` runs each arm again under other controller (or sampling) seeds, for
the spread of the best reward found. FPN, which is not in the searched space (it has fewer cells),
is trained once for reference. With ``--fidelity`` (a report of ``nas proxy fidelity --json`` on the
same proxy) the proxy's paired noise is printed beside the results, to judge the differences.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from controller.controller import Controller
from nas_service.search_config import SearchConfig, load_search_config
from proxy_trainer.fidelity import measured_noise
from proxy_trainer.trainer import train_proxy
from search_spaces import Architecture, fpn
from search_spaces.space import resolve_architecture

ARMS = ("seeded controller", "unseeded controller", "random sampling")


@dataclass
class ArmRun:
    arm: str
    seed: int
    rewards: list[float | None] = field(default_factory=list)
    """One per proposal, in order (None: failed, learned from by no one)."""
    hashes: list[str] = field(default_factory=list)

    @property
    def best(self) -> float:
        return max((r for r in self.rewards if r is not None), default=float("nan"))

    @property
    def best_at(self) -> int:
        """The episode (0-based) that first reached the best reward."""
        return self.rewards.index(self.best)


class Rewards:
    """The proxy's reward of a cell, each cell trained once (the same seed for all, as in a search). A
    failed episode, or one without a finite reward, gets ``failures.penalty_reward`` as in a search
    (None: the controller learns nothing from it); the bench does not retry."""

    def __init__(self, config: SearchConfig, threads: int | None) -> None:
        self.config, self.threads = config, threads
        self.known: dict[str, float | None] = {}
        self.train_seconds = 0.0

    def __call__(self, architecture: Architecture) -> float | None:
        key = architecture.canonical_hash()
        if key not in self.known:
            result = train_proxy(architecture, self.config.proxy, self.threads)
            self.train_seconds += result.wall_time
            self.known[key] = self.config.failures.penalty_reward
            if result.status == "completed":
                try:
                    self.known[key] = self.config.reward.reward(result.metrics, result.neck_flops)
                except (KeyError, ValueError):
                    pass
            print(f"  trained {key[:12]}: {self.known[key]} ({result.wall_time:.0f} s)", flush=True)
        return self.known[key]


Step = Callable[[Callable[[Architecture], float | None]], tuple[str, float | None]]
"""One proposal of an arm: given the reward function, the cell's hash and its reward."""


def controller_arm(config: SearchConfig, seeded: bool, seed: int) -> Step:
    """Propose with the search's controller (seeded or not, under controller seed ``seed``), learning as it goes."""
    controller_config = config.controller.model_copy(
        update={"seed": seed, **({} if seeded else {"seed_architecture": None})}
    )
    controller = Controller(controller_config)

    def step(reward_of: Callable[[Architecture], float | None]) -> tuple[str, float | None]:
        proposal, architecture = controller.propose()
        reward = reward_of(architecture)
        controller.report(proposal.id, reward)
        return architecture.canonical_hash(), reward

    return step


def random_arm(config: SearchConfig, seed: int) -> Step:
    space, rng = config.controller.space(), random.Random(seed)

    def step(reward_of: Callable[[Architecture], float | None]) -> tuple[str, float | None]:
        architecture = space.random_architecture(rng)
        return architecture.canonical_hash(), reward_of(architecture)

    return step


def run_arm(arm: str, config: SearchConfig, seed: int, episodes: int, rewards: Rewards) -> ArmRun:
    if arm == "random sampling":
        step = random_arm(config, seed)
    else:
        step = controller_arm(config, seeded=arm == "seeded controller", seed=seed)
    run = ArmRun(arm, seed)
    for episode in range(episodes):
        key, reward = step(rewards)
        run.hashes.append(key)
        run.rewards.append(reward)
        print(f"{arm} (seed {seed}) episode {episode}: {key[:12]} {reward}, best {run.best:.4f}", flush=True)
    return run


def summary_lines(runs: list[ArmRun], references: dict[str, float | None], noise: float | None, episodes: int) -> list[str]:
    lines = [f"best reward within {episodes} episodes (mean +- spread over {len({r.seed for r in runs})} runs):"]
    for arm in ARMS:
        mine = [run for run in runs if run.arm == arm]
        bests = [run.best for run in mine]
        spread = statistics.stdev(bests) if len(bests) > 1 else 0.0
        distinct = statistics.fmean(len(set(run.hashes)) for run in mine)
        at = statistics.fmean(run.best_at for run in mine)
        lines.append(
            f"  {arm:20} {statistics.fmean(bests):.4f} +- {spread:.4f}  (runs: {', '.join(f'{b:.4f}' for b in bests)}; "
            f"{distinct:.1f} distinct cells, best first reached at episode {at:.1f})"
        )
    lines.append("references: " + ", ".join(
        f"{name} {'failed' if value is None else f'{value:.4f}'}" for name, value in references.items()))
    lines.append(
        f"proxy paired noise (spread of a same-seed difference of two cells): {noise:.4f}"
        if noise is not None
        else "proxy paired noise: unknown (pass --fidelity REPORT.json)"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", type=Path, default=Path("configs/search/demo.yaml"))
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--fidelity", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    config = load_search_config(args.config)
    noise = None
    if args.fidelity is not None:
        report = json.loads(args.fidelity.read_text())
        noise = measured_noise(report, config.proxy, config.reward.reward, str(args.fidelity)).paired_noise
    start = time.perf_counter()
    rewards = Rewards(config, args.threads)
    levels = config.proxy.detector.neck.levels
    references = {"fpn": rewards(fpn(levels))}
    runs = [run_arm(arm, config, seed, args.episodes, rewards) for seed in range(args.repeats) for arm in ARMS]
    seed_cell = config.controller.seed_architecture
    if seed_cell is not None:
        references[f"seed cell {seed_cell}"] = rewards(resolve_architecture(seed_cell, levels))
    lines = summary_lines(runs, references, noise, args.episodes)
    lines.append(
        f"{len(rewards.known)} cells trained in {rewards.train_seconds / 60:.1f} min "
        f"({rewards.train_seconds / len(rewards.known):.0f} s each); {(time.perf_counter() - start) / 60:.1f} min in all"
    )
    print("\n" + "\n".join(lines))
    if args.json is not None:
        args.json.write_text(json.dumps({"runs": [asdict(r) for r in runs], "references": references,
                                         "noise": noise, "summary": lines}, indent=2))


if __name__ == "__main__":
    main()
