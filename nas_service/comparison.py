"""Does a search's best cell beat its seed architecture by more than the proxy's noise?

Every episode of a search is trained under the same seed, so two episodes differ by their cell and by
the noise of a same-seed difference between two cells, which ``nas proxy fidelity`` measures (its
paired noise) and a search may carry (``reward.noise``). The best of many episodes is a maximum, so a
lead of one spread is weak evidence: a lead counts when it is ``NOISE_MULTIPLE`` spreads or more
(about 98 % one-sided for normal noise).
"""

from __future__ import annotations

from dataclasses import dataclass

from nas_service.search_config import RewardConfig, RewardNoise
from nas_service.store import EpisodeStore, SearchRecord
from search_spaces.space import resolve_architecture

NOISE_MULTIPLE = 2.0


@dataclass(frozen=True)
class SeedComparison:
    seed_episode: int
    seed_reward: float
    best_episode: int
    best_reward: float
    noise: RewardNoise | None
    """None: the search carries no measured noise."""

    @property
    def lead(self) -> float:
        return self.best_reward - self.seed_reward

    @property
    def lead_in_noise(self) -> float | None:
        """The lead over the paired noise; None without a measured noise."""
        return None if self.noise is None else self.lead / self.noise.paired

    @property
    def beats_seed(self) -> bool | None:
        """Whether the best cell beats the seed cell by ``NOISE_MULTIPLE`` times the noise; None: unknown."""
        ratio = self.lead_in_noise
        return None if ratio is None else ratio >= NOISE_MULTIPLE

    def lines(self) -> list[str]:
        lines = [f"seed cell: episode {self.seed_episode}, reward {self.seed_reward:.4f}"]
        lead = f"best: episode {self.best_episode}, reward {self.best_reward:.4f}, {self.lead:+.4f} over the seed cell"
        if self.noise is None:
            return lines + [
                f"{lead}; the proxy's noise is unknown: measure it with `nas proxy fidelity -c PROXY.yaml --json "
                "REPORT.json` and start searches with `--fidelity REPORT.json`"
            ]
        verdict = "beyond the noise" if self.beats_seed else "within the noise, not a proven improvement"
        lines.append(
            f"{lead} = {self.lead_in_noise:.1f}x the proxy's paired noise {self.noise.paired:.4f}: {verdict} "
            f"(a lead counts from {NOISE_MULTIPLE:g}x)"
        )
        if self.noise.cells:
            measured = ", ".join(f"{name} {reward:.4f}" for name, reward in self.noise.cells.items())
            lines.append(f"measured beside it ({self.noise.source}): {measured}")
        return lines


def compare_with_seed(store: EpisodeStore, search: SearchRecord) -> SeedComparison | None:
    """The best episode against the seed architecture's, or None (unseeded search, or either untrained)."""
    controller = search.config.get("controller", {})
    seed = controller.get("seed_architecture")
    if seed is None or search.best_episode_number is None or search.best_reward is None:
        return None
    levels = controller.get("levels") or search.config["proxy"]["detector"]["neck"]["levels"]
    seed_episode = store.find_completed_by_hash(search.id, resolve_architecture(seed, levels).canonical_hash())
    if seed_episode is None or seed_episode.reward is None:
        return None
    noise = RewardConfig.model_validate(search.config.get("reward", {})).noise
    best = (search.best_episode_number, search.best_reward)
    return SeedComparison(seed_episode.number, seed_episode.reward, *best, noise)
