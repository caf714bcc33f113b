"""The search controller: proposes architectures, learns from their rewards by policy gradient.

Rewards come back from parallel workers in any order. Each proposal keeps the log-probability it was
sampled with; once ``batch_size`` rewards are in, the policy is updated on them (PPO's clipped ratio
against those log-probabilities, or REINFORCE) with an exponential-moving-average baseline.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from controller.config import ControllerConfig
from controller.policy import LSTMPolicy
from search_spaces.architecture import Architecture
from search_spaces.space import resolve_architecture

STATE_VERSION = 1


@dataclass(frozen=True)
class Proposal:
    id: int
    decisions: tuple[int, ...]
    log_prob: float
    """Log-probability under the policy at sampling time (PPO's denominator)."""


@dataclass(frozen=True)
class UpdateStats:
    update: int
    loss: float
    entropy: float
    """Mean entropy (nats per architecture) of the policy on the batch, after the update."""
    mean_reward: float
    baseline: float


class Controller:
    def __init__(self, config: ControllerConfig, pretrain_seed: bool = True) -> None:
        self.config = config
        self.space = config.space()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.policy = LSTMPolicy(self.space, config.hidden_size)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.learning_rate)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.baseline: float | None = None
        self.reward_variance = 0.0
        self.num_proposed = 0
        self.num_updates = 0
        self.pending: dict[int, Proposal] = {}
        self.rewarded: list[tuple[Proposal, float]] = []
        # Resolved once: a seed given as a JSON file is not re-read on every proposal.
        self.seed_architecture: Architecture | None = (
            None
            if config.seed_architecture is None
            else resolve_architecture(config.seed_architecture, config.levels)
        )
        self.seed_probability: float | None = None
        self.seed_steps = 0
        if config.seed_architecture is not None and pretrain_seed:
            self._pretrain_on_seed()

    # -- proposing ---------------------------------------------------------------------------------

    def propose(self) -> tuple[Proposal, Architecture]:
        """The next architecture to train; the very first one is the seed architecture, if any."""
        seed = self.seed_architecture
        with torch.no_grad():
            if self.num_proposed == 0 and seed is not None:
                decisions = torch.tensor([self.space.decisions(seed)])
                out = self.policy(1, self.config.temperature, actions=decisions)
            else:
                out = self.policy(1, self.config.temperature, generator=self.generator)
        proposal = Proposal(
            id=self.num_proposed,
            decisions=tuple(int(d) for d in out.actions[0]),
            log_prob=float(out.log_prob[0]),
        )
        self.num_proposed += 1
        self.pending[proposal.id] = proposal
        return proposal, self.space.architecture(proposal.decisions)

    def probability(self, architecture: Architecture) -> float:
        """Probability that the policy samples exactly this cell sequence."""
        decisions = torch.tensor([self.space.decisions(architecture)])
        with torch.no_grad():
            return math.exp(float(self.policy(1, self.config.temperature, actions=decisions).log_prob[0]))

    # -- learning ----------------------------------------------------------------------------------

    def report(self, proposal_id: int, reward: float | None) -> UpdateStats | None:
        """Record the reward of a proposal (``None``: drop it unlearned); update when a batch is full."""
        try:
            proposal = self.pending.pop(proposal_id)
        except KeyError:
            raise KeyError(f"proposal {proposal_id} is not awaiting a reward") from None
        if reward is None:
            return None
        if not math.isfinite(reward):
            self.pending[proposal_id] = proposal
            raise ValueError(f"reward for proposal {proposal_id} must be finite, got {reward}")
        self.rewarded.append((proposal, float(reward)))
        if len(self.rewarded) < self.config.batch_size:
            return None
        batch, self.rewarded = self.rewarded, []
        return self._update(batch)

    def _update(self, batch: list[tuple[Proposal, float]]) -> UpdateStats:
        config = self.config
        rewards = torch.tensor([reward for _, reward in batch])
        if self.baseline is None:
            self.baseline = float(rewards.mean())
            self.reward_variance = float(rewards.var(unbiased=False))
        advantages = rewards - self.baseline
        if config.normalize_advantages:
            advantages = advantages / math.sqrt(self.reward_variance + 1e-8)
        decay = config.baseline_decay
        for reward in rewards.tolist():
            self.reward_variance = decay * self.reward_variance + (1 - decay) * (reward - self.baseline) ** 2
            self.baseline = decay * self.baseline + (1 - decay) * reward
        actions = torch.tensor([proposal.decisions for proposal, _ in batch])
        old_log_prob = torch.tensor([proposal.log_prob for proposal, _ in batch])
        epochs = config.ppo_epochs if config.algorithm == "ppo" else 1
        for _ in range(epochs):
            out = self.policy(len(batch), config.temperature, actions=actions)
            if config.algorithm == "ppo":
                ratio = torch.exp(out.log_prob - old_log_prob)
                clipped = ratio.clamp(1 - config.ppo_clip, 1 + config.ppo_clip)
                surrogate = torch.minimum(ratio * advantages, clipped * advantages)
            else:
                surrogate = out.log_prob * advantages
            loss = -surrogate.mean() - config.entropy_weight * out.entropy.mean()
            self.optimizer.zero_grad()
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), config.grad_clip)
            self.optimizer.step()
        self.num_updates += 1
        with torch.no_grad():
            entropy = float(self.policy(len(batch), config.temperature, actions=actions).entropy.mean())
        return UpdateStats(
            update=self.num_updates,
            loss=float(loss.detach()),
            entropy=entropy,
            mean_reward=float(rewards.mean()),
            baseline=self.baseline,
        )

    def _pretrain_on_seed(self) -> None:
        """Maximum-likelihood steps on the seed architecture until the policy samples it with the target probability.

        This starts the search near a known-good cell while every other cell keeps a non-zero chance.
        """
        seed = self.seed_architecture
        assert seed is not None
        config = self.config
        decisions = torch.tensor([self.space.decisions(seed)])
        optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.seed_learning_rate)
        target = math.log(config.seed_target_probability)
        for step in range(config.seed_max_steps + 1):
            log_prob = self.policy(1, config.temperature, actions=decisions).log_prob[0]
            if float(log_prob.detach()) >= target or step == config.seed_max_steps:
                break
            optimizer.zero_grad()
            (-log_prob).backward()
            optimizer.step()
        self.seed_steps = step
        self.seed_probability = math.exp(float(log_prob.detach()))

    # -- persistence -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimizer, RNG, baseline, queues, counters."""
        return {
            "version": STATE_VERSION,
            "config": self.config.model_dump(mode="json"),
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "baseline": self.baseline,
            "reward_variance": self.reward_variance,
            "num_proposed": self.num_proposed,
            "num_updates": self.num_updates,
            "pending": [asdict(p) for p in self.pending.values()],
            "rewarded": [(asdict(p), reward) for p, reward in self.rewarded],
            "seed_probability": self.seed_probability,
            "seed_steps": self.seed_steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"controller state: version {state.get('version')!r}, expected {STATE_VERSION}")
        config = ControllerConfig.model_validate(state["config"])
        if config != self.config:
            raise ValueError("controller state: saved with a different controller config")
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.baseline = state["baseline"]
        self.reward_variance = state["reward_variance"]
        self.num_proposed = state["num_proposed"]
        self.num_updates = state["num_updates"]
        self.pending = {p["id"]: _proposal(p) for p in state["pending"]}
        self.rewarded = [(_proposal(p), reward) for p, reward in state["rewarded"]]
        self.seed_probability = state["seed_probability"]
        self.seed_steps = state["seed_steps"]

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Controller":
        state = torch.load(io.BytesIO(data), weights_only=True)
        controller = cls(ControllerConfig.model_validate(state["config"]), pretrain_seed=False)
        controller.load_state_dict(state)
        return controller


def _proposal(data: dict[str, Any]) -> Proposal:
    return Proposal(id=data["id"], decisions=tuple(data["decisions"]), log_prob=data["log_prob"])
