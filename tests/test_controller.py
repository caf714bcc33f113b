import math
import random

import pytest
import torch

from bench.learning_task import episodes_to_target, random_episodes_to_target
from controller import ControllerConfig
from controller.controller import Controller
from search_spaces import fpn, nasfpn
from search_spaces.space import SearchSpace


def _unseeded(**changes) -> ControllerConfig:
    return ControllerConfig(seed_architecture=None, **changes)


@pytest.mark.parametrize("seeded", [False, True])
def test_ten_thousand_samples_are_all_valid(seeded):
    config = ControllerConfig() if seeded else _unseeded(seed=3)
    controller = Controller(config)
    space = controller.space
    with torch.no_grad():
        out = controller.policy(10_000, generator=torch.Generator().manual_seed(1))
    assert out.actions.shape == (10_000, space.num_decisions)
    archs = [space.architecture(row) for row in out.actions.tolist()]  # raises on any invalid sample
    assert len({arch.canonical_hash() for arch in archs}) > 100
    assert torch.isfinite(out.log_prob).all()


def test_masks_match_the_search_space_rules():
    """Every legal choice gets probability mass, and no illegal one does."""
    space = SearchSpace(num_cells=6)
    controller = Controller(_unseeded(num_cells=6, seed=5))
    with torch.no_grad():
        out = controller.policy(4000, temperature=3.0, generator=torch.Generator().manual_seed(0))
    seen: dict[int, set[int]] = {}
    for row in out.actions.tolist():
        for step, value in enumerate(row):
            assert value in space.choices(step, row[:step])
            seen.setdefault(step, set()).add(value)
    assert seen[4 * 5] == set(range(len(space.levels) + 5))  # the last cell may read every pool entry
    assert seen[2] == set(range(len(space.levels)))


def test_seeding_starts_near_the_seed_but_explores():
    config = ControllerConfig(seed_target_probability=0.1)
    controller = Controller(config)
    assert config.seed_target_probability <= controller.seed_probability < 0.5
    assert controller.probability(nasfpn()) == pytest.approx(controller.seed_probability)
    proposals = [controller.propose()[1] for _ in range(50)]
    assert proposals[0] == nasfpn()
    distinct = {arch.canonical_hash() for arch in proposals}
    assert len(distinct) >= 25
    # Samples stay close to the seed: most share its first (intermediate) cell.
    assert sum(arch.cells[0] == nasfpn().cells[0] for arch in proposals) > 25


def test_unseeded_controller_gives_the_seed_no_special_probability():
    controller = Controller(_unseeded())
    assert controller.seed_probability is None
    assert controller.probability(nasfpn()) < 1e-6


def test_rewards_out_of_order_update_the_policy():
    controller = Controller(_unseeded(batch_size=4))
    proposals = [controller.propose()[0] for _ in range(6)]
    before = {k: v.clone() for k, v in controller.policy.state_dict().items()}
    stats = [controller.report(p.id, reward) for p, reward in zip(reversed(proposals), [0.1, 0.5, 0.2, 0.9])]
    assert stats[:3] == [None, None, None]
    assert stats[3] is not None and stats[3].update == 1
    assert math.isfinite(stats[3].entropy) and stats[3].entropy > 0
    after = controller.policy.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert sorted(controller.pending) == [0, 1]


def test_report_rejects_unknown_ids_and_bad_rewards_without_losing_the_proposal():
    controller = Controller(_unseeded())
    proposal, _ = controller.propose()
    with pytest.raises(KeyError, match="proposal 99 is not awaiting a reward"):
        controller.report(99, 0.5)
    with pytest.raises(ValueError, match="must be finite, got nan"):
        controller.report(proposal.id, float("nan"))
    assert proposal.id in controller.pending
    assert controller.report(proposal.id, None) is None  # skipped: the controller does not learn from it
    assert controller.pending == {} and controller.rewarded == []


def _drive(controller: Controller, steps: int, rng: random.Random) -> list[tuple[int, ...]]:
    """Propose, and report rewards out of order, as parallel workers would."""
    seen = []
    open_ids = []
    for _ in range(steps):
        proposal, arch = controller.propose()
        seen.append(proposal.decisions)
        open_ids.append(proposal.id)
        if len(open_ids) >= 3:
            done = open_ids.pop(rng.randrange(len(open_ids)))
            controller.report(done, rng.random())
    return seen


@pytest.mark.parametrize("algorithm", ["ppo", "reinforce"])
def test_same_seed_same_rewards_same_samples(algorithm):
    config = ControllerConfig(algorithm=algorithm, seed=7)
    first = _drive(Controller(config), 20, random.Random(0))
    second = _drive(Controller(config), 20, random.Random(0))
    assert first == second
    assert len(set(first)) > 5


@pytest.mark.parametrize("algorithm", ["ppo", "reinforce"])
def test_state_round_trip_resumes_exactly(algorithm):
    config = ControllerConfig(algorithm=algorithm, seed=11, batch_size=3)
    rng = random.Random(4)
    original = Controller(config)
    _drive(original, 13, rng)
    assert original.pending and original.num_updates > 0
    restored = Controller.from_bytes(original.to_bytes())
    assert restored.num_proposed == original.num_proposed
    assert restored.pending == original.pending and restored.rewarded == original.rewarded
    rng_state = rng.getstate()
    expected = _drive(original, 10, rng)
    rng.setstate(rng_state)
    assert _drive(restored, 10, rng) == expected
    for key, value in original.policy.state_dict().items():
        torch.testing.assert_close(restored.policy.state_dict()[key], value)


def test_load_rejects_a_state_from_another_config():
    state = Controller(_unseeded(seed=1)).state_dict()
    with pytest.raises(ValueError, match="different controller config"):
        Controller(_unseeded(seed=2)).load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        Controller(_unseeded(seed=1)).load_state_dict({**state, "version": 0})


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="seed_architecture"):
        ControllerConfig(seed_architecture=fpn().to_dict())  # 5 cells, the space has 7
    with pytest.raises(ValueError, match="seed_architecture"):
        ControllerConfig(seed_architecture="bifpn")
    with pytest.raises(ValueError, match="levels: must be ascending"):
        ControllerConfig(levels=(3, 5, 7), seed_architecture=None)
    with pytest.raises(ValueError, match="batch_size"):
        ControllerConfig(batch_size=0)
    with pytest.raises(ValueError, match="algorithm"):
        ControllerConfig(algorithm="evolution")


# -- learning, not just running ---------------------------------------------------------------------

BUDGET = 1500


TARGET_SEEDS = (2024, 7, 99)


@pytest.mark.parametrize(("algorithm", "required"), [("ppo", 3), ("reinforce", 2)])
def test_controller_finds_hidden_targets(algorithm, required):
    """Reward = fraction of decisions that match a hidden cell; the controller must sample it exactly.

    PPO finds every target within the budget; REINFORCE, noisier with the same defaults, most of them.
    """
    space = SearchSpace()
    found = [
        episodes_to_target(
            Controller(_unseeded(algorithm=algorithm, seed=seed)),
            space.random_architecture(random.Random(seed)),
            BUDGET,
        )
        for seed in TARGET_SEEDS
    ]
    assert sum(episodes is not None for episodes in found) >= required, found


def test_random_search_does_not_find_the_hidden_target():
    space = SearchSpace()
    for seed in TARGET_SEEDS:
        target = space.random_architecture(random.Random(seed))
        episodes, best = random_episodes_to_target(space, target, BUDGET, seed=seed + 1)
        assert episodes is None
        assert best < 0.8
