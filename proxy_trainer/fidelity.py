"""Proxy fidelity: can this proxy rank cells? Train each cell under several seeds and measure.

A search compares cells by a noisy reward. What decides whether it can rank them is the noise of the
*difference* between two cells under the conditions a search uses (one seed for both, hence the
same data order and the same start of everything but the cell), next to the differences between
cells; and whether a short proxy orders cells as a longer training does. ``fidelity_statistics``
computes these from rewards alone (a pure function); ``run_fidelity`` trains the episodes.

Rank agreement is Spearman's rho (Pearson's correlation of the ranks, ties given their mean rank).
The verdict's thresholds are the targets this project set for its CPU proxy.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

from nas_errors import UserError
from proxy_trainer.base import prepare_base
from proxy_trainer.config import ProxyConfig
from proxy_trainer.fit import log
from proxy_trainer.trainer import ProxyResult, train_proxy
from search_spaces.architecture import Architecture
from search_spaces.space import SearchSpace, resolve_architecture

SEED_AGREEMENT_MIN = 0.8
"""Mean Spearman's rho between the cell orderings of two seeds."""
PAIRED_RATIO_MIN = 3.0
"""Mean same-seed difference of the first two cells over its spread."""
GAP_RATIO_MIN = 3.0
"""Best minus worst cell mean over the pooled spread of one cell's reward."""
REFERENCE_AGREEMENT_MIN = 0.7
"""Spearman's rho between the proxy's ordering (cell means) and the longer training's."""


@dataclass
class CellSummary:
    name: str
    rewards: list[float]
    """One per seed, in seed order."""
    mean: float
    spread: float
    """Sample standard deviation over seeds."""


@dataclass
class PairedDifference:
    first: str
    second: str
    mean: float
    """Mean of first - second under the same seed."""
    spread: float
    """Sample standard deviation of those differences."""
    ratio: float
    """|mean| / spread: how many times the paired noise the difference is."""
    wins: int
    """Seeds under which ``first`` scored higher."""


@dataclass
class Verdict:
    trustworthy: bool | None
    """None: not enough seeds to tell."""
    reasons: list[str]

    def __str__(self) -> str:
        word = {True: "trustworthy", False: "noisy", None: "unknown"}[self.trustworthy]
        return f"{word}: " + "; ".join(self.reasons)


@dataclass
class FidelityStatistics:
    cells: list[CellSummary]
    pairs: list[PairedDifference]
    """Every pair of cells, in the order given (the first pair is the one the verdict judges)."""
    paired_noise: float
    """Spread of a same-seed difference between two cells, pooled over all pairs: the noise a search
    comparing two episodes sees."""
    pooled_spread: float
    """Spread of one cell's reward over seeds, pooled over cells."""
    best: str
    worst: str
    gap_ratio: float
    """(best mean - worst mean) / pooled spread."""
    seed_agreement: dict[str, float]
    """Spearman's rho between the cell rewards of two seeds, by ``"i-j"`` (seed positions)."""
    seed_agreement_mean: float
    reference: dict[str, float] | None
    """Each cell's reward after the longer training, when measured."""
    reference_agreement: float | None
    verdict: Verdict


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho of two paired samples; NaN when either is constant (no ordering to compare)."""
    if len(x) != len(y):
        raise ValueError(f"spearman: samples of different lengths ({len(x)} and {len(y)})")
    rx, ry = _ranks(x), _ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, tied values sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def fidelity_statistics(
    rewards: Mapping[str, Sequence[float]], reference: Mapping[str, float] | None = None
) -> FidelityStatistics:
    """The report's numbers from each cell's rewards (one per seed, the same seeds in the same order for
    every cell) and, optionally, each cell's reward after a longer training."""
    names = list(rewards)
    seeds = {len(values) for values in rewards.values()}
    if len(names) < 2 or len(seeds) != 1 or min(seeds) < 1:
        raise ValueError("rewards: need at least two cells with the same number (at least one) of seeds each")
    if not all(math.isfinite(value) for values in rewards.values() for value in values):
        raise ValueError("rewards: every reward must be a finite number")
    cells = [CellSummary(name, list(values), statistics.fmean(values), _sd(values)) for name, values in rewards.items()]
    pairs = [_paired(a, b, rewards[a], rewards[b]) for a, b in itertools.combinations(names, 2)]
    paired_noise = math.sqrt(statistics.fmean(pair.spread**2 for pair in pairs))
    pooled = math.sqrt(statistics.fmean(cell.spread**2 for cell in cells))
    best = max(cells, key=lambda cell: cell.mean)
    worst = min(cells, key=lambda cell: cell.mean)
    count = min(seeds)
    by_seed = [[rewards[name][i] for name in names] for i in range(count)]
    agreement = {f"{i}-{j}": spearman(by_seed[i], by_seed[j]) for i, j in itertools.combinations(range(count), 2)}
    finite = [rho for rho in agreement.values() if math.isfinite(rho)]
    agreement_mean = statistics.fmean(finite) if finite else math.nan
    reference_agreement = None
    if reference is not None:
        if set(reference) != set(names):
            raise ValueError(f"reference: needs a reward for each cell {names}, got {sorted(reference)}")
        reference_agreement = spearman([cell.mean for cell in cells], [reference[name] for name in names])
    statistics_ = FidelityStatistics(
        cells=cells,
        pairs=pairs,
        paired_noise=paired_noise,
        pooled_spread=pooled,
        best=best.name,
        worst=worst.name,
        gap_ratio=_ratio(best.mean - worst.mean, pooled),
        seed_agreement=agreement,
        seed_agreement_mean=agreement_mean,
        reference=None if reference is None else dict(reference),
        reference_agreement=reference_agreement,
        verdict=Verdict(None, []),
    )
    statistics_.verdict = verdict(statistics_, count)
    return statistics_


def verdict(stats: FidelityStatistics, seeds: int) -> Verdict:
    """Trustworthy when every measured criterion passes; the reasons say what was measured against what."""
    if seeds < 2:
        return Verdict(None, ["at least 2 seeds are needed to measure the noise"])
    pair = stats.pairs[0]
    checks = [
        (stats.seed_agreement_mean >= SEED_AGREEMENT_MIN,
         f"rank agreement between seeds {stats.seed_agreement_mean:.2f} (needs {SEED_AGREEMENT_MIN})"),
        (pair.ratio >= PAIRED_RATIO_MIN,
         f"{pair.first} vs {pair.second} under the same seed differ by {pair.ratio:.1f}x their spread "
         f"(needs {PAIRED_RATIO_MIN:g}x)"),
        (stats.gap_ratio >= GAP_RATIO_MIN,
         f"best vs worst cell {stats.gap_ratio:.1f}x the spread over seeds (needs {GAP_RATIO_MIN:g}x)"),
    ]
    if stats.reference_agreement is not None:
        checks.append(
            (stats.reference_agreement >= REFERENCE_AGREEMENT_MIN,
             f"rank agreement with the longer training {stats.reference_agreement:.2f} "
             f"(needs {REFERENCE_AGREEMENT_MIN})")
        )
    failed = [reason for passed, reason in checks if not passed]
    if failed:
        return Verdict(False, failed)
    return Verdict(True, [reason for _, reason in checks])


def _paired(first: str, second: str, a: Sequence[float], b: Sequence[float]) -> PairedDifference:
    differences = [x - y for x, y in zip(a, b)]
    mean = statistics.fmean(differences)
    spread = _sd(differences)
    return PairedDifference(first, second, mean, spread, _ratio(abs(mean), spread), sum(x > y for x, y in zip(a, b)))


def _sd(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else math.nan


def _ratio(signal: float, noise: float) -> float:
    if math.isnan(noise):
        return math.nan
    if noise > 0:
        return signal / noise
    return math.inf if signal > 0 else math.nan


# -- measuring --------------------------------------------------------------------------------------


@dataclass
class Episode:
    cell: str
    seed: int
    iterations: int
    reference: bool
    """One of the longer trainings the proxy's ordering is compared with."""
    result: ProxyResult


@dataclass
class FidelityReport:
    proxy: dict[str, Any]
    """The proxy config measured, as JSON: a search checks it carries the noise of its own proxy."""
    metric: str
    seeds: list[int]
    cells: dict[str, dict[str, Any]]
    """Cell name -> its architecture as a dict."""
    episodes: list[Episode]
    reference_factor: float | None
    base: str | None
    statistics: FidelityStatistics | None
    """None when too few cells finished every episode."""
    failures: list[str] = field(default_factory=list)
    wall_time: float = 0.0

    @property
    def proxy_results(self) -> list[ProxyResult]:
        """The proxy's own episodes (not the longer reference trainings)."""
        return [episode.result for episode in self.episodes if not episode.reference]

    @property
    def seconds_per_episode(self) -> float:
        return statistics.fmean(r.wall_time for r in self.proxy_results) if self.proxy_results else math.nan

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["episodes"] = [{**asdict(e), "result": e.result.to_dict()} for e in self.episodes]
        data["seconds_per_episode"] = self.seconds_per_episode
        if self.statistics is not None:
            data["statistics"]["verdict"]["text"] = str(self.statistics.verdict)
        return _finite_or_none(data)


def fidelity_cells(
    names: Sequence[str], random_cells: int, levels: Sequence[int], random_seed: int = 0
) -> list[tuple[str, Architecture]]:
    """The named cells (known names or JSON files) and ``random_cells`` drawn uniformly from the space."""
    cells = [(name, resolve_architecture(name, levels)) for name in names]
    rng = random.Random(random_seed)
    space = SearchSpace(tuple(levels))
    cells += [(f"random-{i}", space.random_architecture(rng)) for i in range(1, random_cells + 1)]
    if len(cells) < 2:
        raise UserError("cells: a fidelity report compares at least two cells (add --random K or more --cells)")
    if len({name for name, _ in cells}) != len(cells):
        raise UserError(f"cells: a cell is named twice in {[name for name, _ in cells]}")
    return cells


def run_fidelity(
    config: ProxyConfig,
    cells: Sequence[tuple[str, Architecture]],
    seeds: int,
    metric: str = "AP",
    reference_factor: float | None = None,
    threads: int | None = None,
    on_episode: Callable[[Episode], None] = lambda episode: None,
) -> FidelityReport:
    """Train every cell under ``seeds`` seeds (``train.seed`` onwards) and, with ``reference_factor``,
    once more ``reference_factor`` times longer under the first seed; then the statistics."""
    if reference_factor is not None and reference_factor <= 1:
        raise UserError(f"reference factor: the reference trains longer than the proxy, so more than 1, got {reference_factor:g}")
    if seeds < 1:
        raise UserError(f"seeds: at least 1, got {seeds}")
    start = time.perf_counter()
    paths = config.dataset.paths()
    base = prepare_base(config, paths) if config.base is not None else None  # built or refused before episodes
    seed_list = [config.train.seed + i for i in range(seeds)]
    episodes: list[Episode] = []
    schedule = [(name, arch, seed, config.train.iterations, False) for name, arch in cells for seed in seed_list]
    if reference_factor is not None:
        longer = round(config.train.iterations * reference_factor)
        schedule += [(name, arch, seed_list[0], longer, True) for name, arch in cells]
    for name, arch, seed, iterations, reference in schedule:
        log.info(f"fidelity: cell {name}, seed {seed}, {iterations} iterations")
        train = config.train.model_copy(update={"seed": seed, "iterations": iterations})
        result = train_proxy(arch, config.model_copy(update={"train": train}), threads)
        episode = Episode(name, seed, iterations, reference, result)
        episodes.append(episode)
        on_episode(episode)
    report = FidelityReport(
        proxy=config.model_dump(mode="json"),
        metric=metric,
        seeds=seed_list,
        cells={name: arch.to_dict() for name, arch in cells},
        episodes=episodes,
        reference_factor=reference_factor,
        base=None if base is None else f"{base.path} (AP {base.metrics['AP']:.4f})",
        statistics=None,
    )
    report.statistics = _statistics(report)
    report.wall_time = time.perf_counter() - start
    return report


def _statistics(report: FidelityReport) -> FidelityStatistics | None:
    """Statistics over the cells whose every episode finished; failures are listed in the report."""
    rewards: dict[str, list[float]] = {name: [] for name in report.cells}
    reference: dict[str, float] = {}
    broken: set[str] = set()
    for episode in report.episodes:
        value = episode.result.metrics.get(report.metric, math.nan)
        if episode.result.status != "completed" or not math.isfinite(value):
            broken.add(episode.cell)
            report.failures.append(
                f"{episode.cell} seed {episode.seed} ({episode.iterations} iterations): "
                f"{episode.result.error or f'{report.metric} is {value}'}"
            )
        elif episode.reference:
            reference[episode.cell] = value
        else:
            rewards[episode.cell].append(value)
    usable = {name: values for name, values in rewards.items() if name not in broken}
    if len(usable) < 2:
        return None
    stats = fidelity_statistics(usable, {n: reference[n] for n in usable} if report.reference_factor else None)
    if report.failures:
        stats.verdict = Verdict(False, [f"{len(report.failures)} episode(s) failed", *stats.verdict.reasons])
    return stats


@dataclass(frozen=True)
class MeasuredNoise:
    """What a search takes from a saved report: the noise of comparing two of its episodes, and the
    reward of each measured cell under the search's seed (the report's first)."""

    paired_noise: float
    cells: dict[str, float]
    seeds: int


# Settings that say where files are or how fast an episode runs, not what it trains.
_NOT_MEASURED = frozenset({"root", "path", "cache_dir", "threads", "device", "log_every", "train_annotations",
                           "train_images", "val_annotations", "val_images"})

Reward = Callable[[Mapping[str, float], int], float]
"""A search's reward of an episode from its metrics and its neck's FLOPs (``RewardConfig.reward``)."""


def measured_noise(report: Mapping[str, Any], config: ProxyConfig, reward: Reward, source: str) -> MeasuredNoise:
    """The paired noise of a report saved with ``nas proxy fidelity --json``, for a search whose proxy
    is ``config``, each episode scored by the search's ``reward`` (whatever metric the report printed).
    Refused, naming the problem, when the report measured another proxy or cannot tell the noise."""
    if not isinstance(report.get("proxy"), dict) or not isinstance(report.get("episodes"), list):
        raise UserError(f"{source}: not a report of `nas proxy fidelity --json` (no proxy or episodes)")
    difference = _first_difference(report["proxy"], config.model_dump(mode="json"))
    if difference is not None:
        where, measured, used = difference
        raise UserError(
            f"{source}: measured another proxy: {where} is {measured!r} there but {used!r} in this search; "
            "measure this proxy with `nas proxy fidelity -c PROXY.yaml --json REPORT.json`"
        )
    rewards: dict[str, list[float]] = {}
    for index, episode in enumerate(report["episodes"]):
        scored = _scored(episode, reward, f"{source}: episodes[{index}]")
        if scored is not None:
            rewards.setdefault(scored[0], []).append(scored[1])
    seeds = len(report.get("seeds") or [])
    complete = {name: values for name, values in rewards.items() if len(values) == seeds}
    if seeds < 2 or len(complete) < 2:
        raise UserError(
            f"{source}: needs at least 2 cells with a reward under each of at least 2 seeds to tell the noise "
            f"(has {len(complete)} cells x {seeds} seeds)"
        )
    noise = fidelity_statistics(complete).paired_noise
    if not noise > 0:
        raise UserError(f"{source}: the paired noise is {noise}: the cells' differences do not vary over seeds; "
                        "measure with more seeds or cells")
    return MeasuredNoise(noise, {name: values[0] for name, values in complete.items()}, seeds)


def _scored(episode: Any, reward: Reward, where: str) -> tuple[str, float] | None:
    """(cell, reward) of one of the proxy's own episodes; None for a reference training or an episode
    without a finite reward (failed)."""
    try:
        cell, reference, result = episode["cell"], episode["reference"], episode["result"]
        status, metrics, flops = result["status"], result.get("metrics") or {}, result.get("neck_flops") or 0
    except (KeyError, TypeError, AttributeError) as error:
        raise UserError(f"{where}: not an episode of a fidelity report (no {error})") from None
    if reference or status != "completed":
        return None
    try:
        return cell, reward(metrics, flops)
    except (KeyError, TypeError, ValueError):  # the metric is missing or not finite: no reward, as in a search
        return None


def _first_difference(measured: Any, used: Any, where: str = "proxy") -> tuple[str, Any, Any] | None:
    """The first setting (dotted path, the two values) that differs between two config dumps."""
    if isinstance(measured, dict) and isinstance(used, dict):
        for key in sorted((set(measured) | set(used)) - _NOT_MEASURED):
            found = _first_difference(measured.get(key), used.get(key), f"{where}.{key}")
            if found is not None:
                return found
        return None
    return None if measured == used else (where, measured, used)


def format_report(report: FidelityReport) -> list[str]:
    """The report as text lines, for the terminal."""
    metric, stats = report.metric, report.statistics
    lines = [
        f"proxy fidelity: {len(report.cells)} cells x {len(report.seeds)} seeds {report.seeds}, reward {metric}, "
        f"base {report.base or 'none (every episode from scratch)'}"
    ]
    lines += [f"failed: {failure}" for failure in report.failures]
    if stats is None:
        return lines + ["too few cells finished every episode to compare them"]
    seeds = "".join(f"{f'seed {s}':>9}" for s in report.seeds)
    lines += ["", f"{'cell':12} {'mean':>8} {'spread':>8}{seeds}"]
    for cell in sorted(stats.cells, key=lambda c: -c.mean):
        lines.append(f"{cell.name:12} {cell.mean:8.4f} {cell.spread:8.4f}" + "".join(f"{r:9.4f}" for r in cell.rewards))
    lines += ["", "paired differences under the same seed (mean +- spread, ratio, seeds won):"]
    for pair in stats.pairs:
        lines.append(
            f"  {pair.first} - {pair.second}: {pair.mean:+.4f} +- {pair.spread:.4f}  {pair.ratio:.1f}x  "
            f"{pair.wins}/{len(report.seeds)}"
        )
    best = next(c for c in stats.cells if c.name == stats.best)
    worst = next(c for c in stats.cells if c.name == stats.worst)
    lines += [
        f"paired noise (spread of a same-seed difference, all pairs): {stats.paired_noise:.4f}",
        f"best vs worst: {best.name} {best.mean:.4f} - {worst.name} {worst.mean:.4f} = {best.mean - worst.mean:.4f}, "
        f"{stats.gap_ratio:.1f}x the pooled spread {stats.pooled_spread:.4f}",
        f"rank agreement between seeds (Spearman): {stats.seed_agreement_mean:.2f} "
        f"({', '.join(f'{k} {v:.2f}' for k, v in stats.seed_agreement.items())})",
    ]
    lines += [f"  seed {seed}: {_ordering({c.name: c.rewards[i] for c in stats.cells})}" for i, seed in enumerate(report.seeds)]
    if stats.reference is not None:
        lines += [
            f"rank agreement with {report.reference_factor:g}x longer training (seed {report.seeds[0]}): "
            f"{stats.reference_agreement:.2f}",
            f"  proxy (means): {_ordering({c.name: c.mean for c in stats.cells})}",
            f"  longer:        {_ordering(stats.reference)}",
        ]
    short = report.proxy_results
    lines += [
        f"cost: {report.seconds_per_episode:.1f} s per episode ({statistics.fmean(r.seconds_per_iteration for r in short):.2f} s "
        f"per iteration, evaluation {statistics.fmean(r.eval_time for r in short):.1f} s, {short[0].threads} threads, "
        f"{short[0].device}); {report.wall_time / 60:.1f} min in all",
        f"verdict: {stats.verdict}",
    ]
    return lines


def _ordering(values: Mapping[str, float]) -> str:
    return " > ".join(name for name, _ in sorted(values.items(), key=lambda item: -item[1]))


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN or infinity: such numbers become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value
