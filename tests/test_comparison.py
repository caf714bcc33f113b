"""A search carries the proxy's measured noise and says whether its best cell beats the seed cell by more."""

import json
import random

import pytest
from typer.testing import CliRunner

from nas_errors import UserError
from nas_service.cli import app
from nas_service.comparison import SeedComparison, compare_with_seed
from nas_service.search_config import RewardConfig, RewardNoise
from nas_service.store import EpisodeStore
from proxy_trainer.fidelity import measured_noise
from search_spaces import nasfpn
from search_spaces.space import SearchSpace
from tests.seeding import LEVELS, search_config
from tests.test_proxy import tiny_proxy_config

# Two cells under three seeds: same-seed differences a - b are 0.10, 0.09, 0.11 (spread 0.01).
AP50 = {"a": [0.30, 0.32, 0.34], "b": [0.20, 0.23, 0.23]}


def _report(proxy: dict) -> dict:
    """A report as `nas proxy fidelity --json` writes it (the fields a search reads)."""
    episodes = [
        {"cell": cell, "seed": seed, "reference": False,
         "result": {"status": "completed", "metrics": {"AP": value / 2, "AP50": value}}}
        for cell, values in AP50.items()
        for seed, value in enumerate(values)
    ]
    episodes.append({"cell": "a", "seed": 0, "reference": True, "result": {"status": "completed", "metrics": {"AP50": 0.9}}})
    episodes.append({"cell": "c", "seed": 0, "reference": False, "result": {"status": "failed", "metrics": {}}})
    return {"proxy": proxy, "seeds": [0, 1, 2], "metric": "AP", "episodes": episodes}


AP50_REWARD = RewardConfig(metric="AP50").reward


def test_the_noise_of_a_saved_report_for_the_searched_reward(tmp_path):
    config = tiny_proxy_config(tmp_path / "data")
    report = _report(config.model_dump(mode="json"))
    noise = measured_noise(report, config, AP50_REWARD, "r.json")
    # one pair: the paired noise is the spread of its differences; c (failed) and the reference are left out
    assert noise.paired_noise == pytest.approx(0.01)
    assert noise.cells == pytest.approx({"a": 0.30, "b": 0.20})
    assert noise.seeds == 3
    half = measured_noise(report, config, RewardConfig(metric="AP").reward, "r.json")
    assert half.paired_noise == pytest.approx(0.005)  # recomputed from AP, not copied from AP50
    # A cost-aware reward scales each episode by its neck's FLOPs: 2 ** -1 halves every reward here.
    costly = RewardConfig(metric="AP50", flops_target=1000, flops_weight=-1.0).reward
    for episode in report["episodes"]:
        episode["result"]["neck_flops"] = 2000
    assert measured_noise(report, config, costly, "r.json").paired_noise == pytest.approx(0.005)
    # An episode whose metric is not finite (null in JSON) has no reward, like a failed one.
    report["episodes"][0]["result"]["metrics"]["AP50"] = None
    with pytest.raises(UserError, match="needs at least 2 cells with a reward under each of at least 2 seeds"):
        measured_noise(report, config, AP50_REWARD, "r.json")


def test_a_report_of_another_proxy_is_refused_naming_the_setting(tmp_path):
    config = tiny_proxy_config(tmp_path / "data")
    other = tiny_proxy_config(tmp_path / "elsewhere", iterations=9)  # where the data lives does not matter
    with pytest.raises(UserError, match=r"r.json: measured another proxy: proxy.train.iterations is 9 there but 4"):
        measured_noise(_report(other.model_dump(mode="json")), config, AP50_REWARD, "r.json")
    moved = tiny_proxy_config(tmp_path / "elsewhere")
    assert measured_noise(_report(moved.model_dump(mode="json")), config, AP50_REWARD, "r.json").paired_noise > 0
    with pytest.raises(UserError, match="not a report of `nas proxy fidelity --json`"):
        measured_noise({"cells": {}}, config, AP50_REWARD, "r.json")
    one_seed = {**_report(config.model_dump(mode="json")), "seeds": [0]}
    with pytest.raises(UserError, match="at least 2 cells with a reward under each of at least 2 seeds"):
        measured_noise(one_seed, config, AP50_REWARD, "r.json")
    broken = _report(config.model_dump(mode="json"))
    del broken["episodes"][2]["result"]
    with pytest.raises(UserError, match=r"r.json: episodes\[2\]: not an episode of a fidelity report \(no 'result'\)"):
        measured_noise(broken, config, AP50_REWARD, "r.json")
    flat = _report(config.model_dump(mode="json"))
    for episode in flat["episodes"]:
        episode["result"]["metrics"]["AP50"] = 0.0  # every cell scores nothing under every seed
    with pytest.raises(UserError, match="the paired noise is 0.0"):
        measured_noise(flat, config, AP50_REWARD, "r.json")


def test_the_lead_counts_from_twice_the_noise():
    noise = RewardNoise(paired=0.01, cells={"fpn": 0.25}, source="r.json: 2 cells x 3 seeds")
    clear = SeedComparison(seed_episode=0, seed_reward=0.30, best_episode=7, best_reward=0.33, noise=noise)
    assert clear.lead == pytest.approx(0.03) and clear.lead_in_noise == pytest.approx(3.0) and clear.beats_seed
    assert clear.lines() == [
        "seed cell: episode 0, reward 0.3000",
        "best: episode 7, reward 0.3300, +0.0300 over the seed cell = 3.0x the proxy's paired noise 0.0100: "
        "beyond the noise (a lead counts from 2x)",
        "measured beside it (r.json: 2 cells x 3 seeds): fpn 0.2500",
    ]
    close = SeedComparison(0, 0.30, 7, 0.315, noise)
    assert close.beats_seed is False and "1.5x the proxy's paired noise 0.0100: within the noise" in close.lines()[1]
    unknown = SeedComparison(0, 0.30, 7, 0.33, None)
    assert unknown.beats_seed is None and "the proxy's noise is unknown" in unknown.lines()[1]


def _search_with_seed_and_best(tmp_path, noise: dict | None) -> tuple[EpisodeStore, str, int]:
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    store = EpisodeStore(url)
    changes = {} if noise is None else {"reward": {"metric": "AP50", "noise": noise}}
    config = search_config(tmp_path / "data", 3, **changes)
    search = store.create_search("compared", config.model_dump(mode="json"), budget_episodes=3)
    cells = [nasfpn(LEVELS), SearchSpace(LEVELS).random_architecture(random.Random(1))]
    for number, (cell, reward) in enumerate(zip(cells, (0.30, 0.33))):
        store.add_episode(search.id, number, cell.to_dict(), cell.canonical_hash())
        store.start_episode(search.id, number, worker="w")
        store.complete_episode(search.id, number, reward, {"AP50": reward}, flops=1, params=1, train_seconds=1.0)
    return store, url, search.id


def test_show_and_export_say_whether_the_best_beats_the_seed_cell(tmp_path):
    noise = {"paired": 0.01, "cells": {"fpn": 0.25}, "source": "r.json: 2 cells x 3 seeds"}
    store, url, search_id = _search_with_seed_and_best(tmp_path, noise)
    comparison = compare_with_seed(store, store.get_search(search_id))
    assert (comparison.seed_episode, comparison.best_episode, comparison.beats_seed) == (0, 1, True)
    shown = CliRunner().invoke(app, ["search", "show", str(search_id), "--db", url])
    assert shown.exit_code == 0, shown.output
    assert "3.0x the proxy's paired noise 0.0100: beyond the noise" in shown.output
    assert "fpn 0.2500" in shown.output
    exported = CliRunner().invoke(app, ["export", "best", "--search", str(search_id), "--db", url])
    assert exported.exit_code == 0, exported.output
    assert "# seed cell: episode 0, reward 0.3000" in exported.stdout
    assert "beyond the noise" in exported.stderr


def test_without_a_measured_noise_the_summary_says_how_to_measure_it(tmp_path):
    store, url, search_id = _search_with_seed_and_best(tmp_path, None)
    shown = CliRunner().invoke(app, ["search", "show", str(search_id), "--db", url])
    assert "the proxy's noise is unknown: measure it with `nas proxy fidelity" in shown.output


def test_start_refuses_a_fidelity_report_it_cannot_use(tmp_path):
    report = tmp_path / "report.json"
    report.write_text("{not json")
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    config_path = tmp_path / "search.json"
    config_path.write_text(json.dumps(search_config(tmp_path / "data", 2).model_dump(mode="json")))
    refused = CliRunner().invoke(
        app, ["search", "start", "-c", str(config_path), "--fidelity", str(report), "--db", url]
    )
    assert refused.exit_code == 2
    assert f"{report}: not JSON" in refused.output
    report.write_text(json.dumps(_report(tiny_proxy_config(tmp_path / "data", iterations=9).model_dump(mode="json"))))
    refused = CliRunner().invoke(
        app, ["search", "start", "-c", str(config_path), "--fidelity", str(report), "--db", url]
    )
    assert refused.exit_code == 2 and "measured another proxy: proxy.train.iterations is 9 there but 2" in refused.output
    assert EpisodeStore(url).list_searches() == []  # nothing was created


def test_start_carries_the_noise_of_a_report_on_its_proxy(tmp_path):
    from nas_service.cli.search import _with_noise

    config = search_config(tmp_path / "data", 2)  # rewarded by AP: the report's AP50 / 2
    report = tmp_path / "report.json"
    report.write_text(json.dumps(_report(config.proxy.model_dump(mode="json"))))
    noise = _with_noise(config, report).reward.noise
    assert noise.paired == pytest.approx(0.005)
    assert noise.cells == pytest.approx({"a": 0.15, "b": 0.10})
    assert noise.source == "report.json: 2 cells x 3 seeds"
