import json
import math

import pytest
from typer.testing import CliRunner

from nas_errors import UserError
from nas_service.cli import app
from proxy_trainer.fidelity import fidelity_cells, fidelity_statistics, run_fidelity, spearman
from search_spaces import fpn, nasfpn
from tests.test_proxy import DIVERGING, tiny_proxy_config

LEVELS = (2, 3, 4, 5, 6)
# Four cells, three seeds. Orderings: seed 0 a > b > c > d, seed 1 a > c > b > d, seed 2 a > b > c > d.
REWARDS = {
    "a": [0.30, 0.32, 0.34],
    "b": [0.20, 0.23, 0.23],
    "c": [0.10, 0.25, 0.14],
    "d": [0.05, 0.06, 0.07],
}


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # one swapped pair: 1 - 6 * (1 + 1) / (4 * (16 - 1))
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties share their mean rank: x ranks 1, 2.5, 2.5, 4 -> 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_statistics_of_hand_made_rewards():
    stats = fidelity_statistics(REWARDS)
    cells = {cell.name: cell for cell in stats.cells}
    assert cells["a"].mean == pytest.approx(0.32) and cells["a"].spread == pytest.approx(0.02)
    assert cells["b"].mean == pytest.approx(0.22) and cells["b"].spread == pytest.approx(math.sqrt(0.0003))
    assert cells["c"].mean == pytest.approx(0.49 / 3) and cells["c"].spread == pytest.approx(math.sqrt(0.0060333333))

    first = stats.pairs[0]  # a - b: 0.10, 0.09, 0.11
    assert (first.first, first.second, first.wins) == ("a", "b", 3)
    assert first.mean == pytest.approx(0.10) and first.spread == pytest.approx(0.01) and first.ratio == pytest.approx(10)
    b_c = next(p for p in stats.pairs if (p.first, p.second) == ("b", "c"))  # 0.10, -0.02, 0.09
    assert b_c.mean == pytest.approx(0.17 / 3) and b_c.wins == 2 and b_c.spread == pytest.approx(math.sqrt(0.0044333333))
    assert len(stats.pairs) == 6
    # variances of the six paired differences: 0.0001, 0.0056333, 0.0001, 0.0044333, 0.0001, 0.0057333
    assert stats.paired_noise == pytest.approx(math.sqrt(0.0161 / 6))
    # cell variances 0.0004, 0.0003, 0.0060333, 0.0001
    assert stats.pooled_spread == pytest.approx(math.sqrt(0.0068333333 / 4))
    assert (stats.best, stats.worst) == ("a", "d")
    assert stats.gap_ratio == pytest.approx(0.26 / math.sqrt(0.0068333333 / 4))
    assert stats.seed_agreement == pytest.approx({"0-1": 0.8, "0-2": 1.0, "1-2": 0.8})
    assert stats.seed_agreement_mean == pytest.approx(2.6 / 3)
    assert stats.reference is None and stats.reference_agreement is None
    assert stats.verdict.trustworthy is True
    assert str(stats.verdict).startswith("trustworthy: rank agreement between seeds 0.87")


def test_reference_agreement_and_what_makes_the_verdict_noisy():
    # proxy means order a > b > c > d; the longer training a > c > b > d
    agreeing = fidelity_statistics(REWARDS, {"a": 0.5, "b": 0.3, "c": 0.4, "d": 0.1})
    assert agreeing.reference_agreement == pytest.approx(0.8) and agreeing.verdict.trustworthy is True
    reversed_ = fidelity_statistics(REWARDS, {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4})
    assert reversed_.reference_agreement == pytest.approx(-1.0)
    assert reversed_.verdict.trustworthy is False
    assert reversed_.verdict.reasons == ["rank agreement with the longer training -1.00 (needs 0.7)"]

    # x - y under the same seed: -0.05, +0.08 -> mean 0.015, spread 0.13 / sqrt(2)
    noisy = fidelity_statistics({"x": [0.10, 0.20], "y": [0.15, 0.12]})
    assert noisy.pairs[0].ratio == pytest.approx(0.015 / (0.13 / math.sqrt(2)))
    assert noisy.seed_agreement == pytest.approx({"0-1": -1.0})
    # means 0.15 and 0.135, variances 0.005 and 0.00045
    assert noisy.gap_ratio == pytest.approx(0.015 / math.sqrt(0.00545 / 2))
    assert str(noisy.verdict) == (
        "noisy: rank agreement between seeds -1.00 (needs 0.8); x vs y under the same seed differ by 0.2x their "
        "spread (needs 3x); best vs worst cell 0.3x the spread over seeds (needs 3x)"
    )
    assert fidelity_statistics({"x": [0.1], "y": [0.2]}).verdict.trustworthy is None


def test_statistics_refuse_incomplete_rewards():
    with pytest.raises(ValueError, match="same number"):
        fidelity_statistics({"a": [0.1, 0.2], "b": [0.1]})
    with pytest.raises(ValueError, match="finite"):
        fidelity_statistics({"a": [0.1, math.nan], "b": [0.1, 0.2]})
    with pytest.raises(ValueError, match="a reward for each cell"):
        fidelity_statistics({"a": [0.1], "b": [0.2]}, {"a": 0.3})


def test_cells_named_and_random():
    cells = fidelity_cells(["fpn", "nasfpn"], 2, LEVELS, random_seed=5)
    assert [name for name, _ in cells] == ["fpn", "nasfpn", "random-1", "random-2"]
    assert cells[0][1] == fpn(LEVELS) and cells[1][1] == nasfpn(LEVELS)
    assert fidelity_cells([], 2, LEVELS, random_seed=5) == cells[2:]
    with pytest.raises(UserError, match="at least two cells"):
        fidelity_cells(["fpn"], 0, LEVELS)
    with pytest.raises(UserError, match="named twice"):
        fidelity_cells(["fpn", "fpn"], 0, LEVELS)


def test_fidelity_command_trains_every_cell_under_every_seed_and_the_reference(tmp_path):
    config = tiny_proxy_config(tmp_path / "synthetic", iterations=2, warmup_iterations=1)
    path, out = tmp_path / "proxy.json", tmp_path / "fidelity.json"
    path.write_text(json.dumps(config.model_dump(mode="json")))  # JSON is YAML
    result = CliRunner().invoke(
        app,
        ["proxy", "fidelity", "-c", str(path), "--random", "1", "--seeds", "2", "--reference-factor", "2",
         "--threads", "1", "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "verdict: " in result.output and "cost: " in result.output
    report = json.loads(out.read_text())
    episodes = report["episodes"]
    assert [(e["cell"], e["seed"], e["iterations"], e["reference"]) for e in episodes] == [
        *((cell, seed, 2, False) for cell in ("fpn", "nasfpn", "random-1") for seed in (0, 1)),
        *((cell, 0, 4, True) for cell in ("fpn", "nasfpn", "random-1")),
    ]
    stats = report["statistics"]
    for cell in stats["cells"]:
        mine = [e["result"]["metrics"]["AP"] for e in episodes if e["cell"] == cell["name"] and not e["reference"]]
        assert cell["rewards"] == mine
    assert stats["reference"] == {e["cell"]: e["result"]["metrics"]["AP"] for e in episodes if e["reference"]}
    assert stats["verdict"]["trustworthy"] in (True, False)
    assert stats["verdict"]["text"] in result.output
    assert report["seconds_per_episode"] > 0 and all(e["result"]["threads"] == 1 for e in episodes)


def test_failed_episodes_are_reported_not_scored(tmp_path):
    config = tiny_proxy_config(tmp_path / "synthetic", iterations=2, **DIVERGING)
    report = run_fidelity(config, fidelity_cells(["fpn", "nasfpn"], 0, LEVELS), seeds=1, threads=1)
    assert report.statistics is None
    assert [f.split(":")[0] for f in report.failures] == ["fpn seed 0 (2 iterations)", "nasfpn seed 0 (2 iterations)"]
    with pytest.raises(UserError, match="more than 1"):
        run_fidelity(config, fidelity_cells(["fpn", "nasfpn"], 0, LEVELS), seeds=1, reference_factor=1)
