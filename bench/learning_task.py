"""A synthetic task that shows a controller learns: find a hidden architecture from partial credit.

The reward is the fraction of decisions that match the hidden target, so it carries signal from the
start, but sampling the target exactly by chance is hopeless (the space has over 10^20 cells). Tests
and ``bench/controller.py`` use it to compare PPO, REINFORCE and random search.
"""

from __future__ import annotations

import random

from controller.controller import Controller
from search_spaces.architecture import Architecture
from search_spaces.space import SearchSpace


def matching_reward(space: SearchSpace, architecture: Architecture, target: Architecture) -> float:
    decisions, wanted = space.decisions(architecture), space.decisions(target)
    return sum(a == b for a, b in zip(decisions, wanted)) / len(wanted)


def episodes_to_target(controller: Controller, target: Architecture, budget: int) -> int | None:
    """Episodes until the controller proposes ``target`` exactly, or None within ``budget``."""
    for episode in range(1, budget + 1):
        proposal, architecture = controller.propose()
        reward = matching_reward(controller.space, architecture, target)
        if reward == 1.0:
            return episode
        controller.report(proposal.id, reward)
    return None


def random_episodes_to_target(
    space: SearchSpace, target: Architecture, budget: int, seed: int
) -> tuple[int | None, float]:
    """Random search on the same task: (episodes to target or None, best reward seen)."""
    rng = random.Random(seed)
    best = 0.0
    for episode in range(1, budget + 1):
        reward = matching_reward(space, space.random_architecture(rng), target)
        if reward == 1.0:
            return episode, reward
        best = max(best, reward)
    return None, best
