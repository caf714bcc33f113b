"""The REST API over a real uvicorn server (``nas serve``) on loopback, on a real SQLite store."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from openapi_spec_validator import validate
from ray.cluster_utils import Cluster
from ray.job_submission import JobSubmissionClient

from detector.engine.config import DetectorTrainingConfig
from nas_errors import Conflict
from nas_service.launcher import create_search, start_runner
from nas_service.store import EpisodeStore
from search_spaces import Architecture
from tests.live_server import HTTP_TIMEOUT, TOKEN, free_port, serving
from tests.seeding import NOISE, add_episode, search_config, seed_search, start_new_episode
from tests.test_store import postgres_url  # noqa: F401  (a fresh PostgreSQL database, dropped afterwards)

REPO = Path(__file__).resolve().parent.parent
JSON = {"Content-Type": "application/json"}
AUTH = {"Authorization": f"Bearer {TOKEN}", **JSON}
"""A change from a client of the API: the token, and the JSON every change must declare."""
EPISODES = 120


def wait_finished(base: str, search_id: int, timeout: float = 300) -> dict:
    """The search once it is completed, failed or stopped (or as it is after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        search = httpx.get(f"{base}/api/searches/{search_id}", timeout=HTTP_TIMEOUT).json()
        if search["status"] in ("completed", "failed", "stopped"):
            break
        time.sleep(1)
    return search


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A store with one finished search of EPISODES episodes and one left running."""
    root = tmp_path_factory.mktemp("api")
    url = f"sqlite:///{root / 'nas.db'}"
    store = EpisodeStore(url)
    finished = seed_search(store, "finished", EPISODES, root / "data")
    running = seed_search(store, "running", 10, root / "data", seed=1, status="running")
    return store, url, root, finished, running


@pytest.fixture(scope="module")
def api(seeded) -> Iterator[httpx.Client]:
    store, url, root, *_ = seeded
    with serving(url, root) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield client


def test_openapi_schema_is_valid_and_documents_the_errors(api):
    schema = api.get("/openapi.json").json()
    validate(schema)
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for code in ("403", "422"):  # a foreign Host or Origin; a bad parameter or body
                problem = operation["responses"][code]["content"]["application/json"]["schema"]
                assert problem == {"$ref": "#/components/schemas/Problem"}, (method, path, code)
            if method in ("post", "delete"):
                assert {"401", "411", "413", "415"} <= set(operation["responses"]), (method, path)
    assert {"/api/searches", "/api/searches/{search_id}/episodes", "/api/searches/{search_id}/export"} <= set(
        schema["paths"]
    )


def test_searches_list_and_detail(api, seeded):
    store, _, _, finished, running = seeded
    listed = {item["name"]: item for item in api.get("/api/searches").json()}
    assert listed["finished"]["status"] == "completed" and listed["finished"]["progress"] == 1.0
    assert listed["running"]["status"] == "running"
    detail = api.get(f"/api/searches/{finished}").json()
    record = store.get_search(finished)
    assert detail["best_reward"] == record.best_reward and detail["num_unique"] == record.num_unique
    assert detail["config"]["budget"]["episodes"] == EPISODES and detail["reward_metric"] == "AP"
    # The first episode trained the seed architecture; the comparison is recomputed here from the episodes.
    first = api.get(f"/api/searches/{finished}/episodes/0").json()
    comparison = detail["seed_comparison"]
    assert (comparison["seed_episode"], comparison["seed_reward"]) == (0, first["reward"])
    assert (comparison["best_episode"], comparison["best_reward"]) == (record.best_episode_number, record.best_reward)
    assert comparison["noise"] == NOISE
    assert comparison["beats_seed"] == (record.best_reward - first["reward"] >= 2 * NOISE)
    assert comparison["summary"][0] == f"seed cell: episode 0, reward {first['reward']:.4f}"


def test_episode_pages_cover_the_search_in_order(api, seeded):
    store, _, _, finished, _ = seeded
    numbers = []
    for offset in range(0, EPISODES, 50):
        page = api.get(f"/api/searches/{finished}/episodes", params={"limit": 50, "offset": offset}).json()
        assert page["total"] == EPISODES
        numbers += [item["number"] for item in page["items"]]
    assert numbers == list(range(EPISODES))

    by_reward = api.get(f"/api/searches/{finished}/episodes", params={"sort": "reward", "order": "desc"}).json()
    rewards = [item["reward"] for item in by_reward["items"]]
    assert rewards == sorted(rewards, reverse=True)
    assert rewards[0] == store.get_search(finished).best_reward

    failed = api.get(f"/api/searches/{finished}/episodes", params={"status": "failed"}).json()
    assert failed["total"] == store.get_search(finished).num_failed == len(failed["items"]) > 0
    assert all(item["status"] == "failed" and item["error"] for item in failed["items"])


def test_incremental_polling_returns_only_new_episodes(api, seeded):
    store, _, _, _, running = seeded
    first = api.get(f"/api/searches/{running}/episodes", params={"after": -1}).json()
    last = first["last_number"]
    truncated = api.get(f"/api/searches/{running}/episodes", params={"after": -1, "limit": 4}).json()
    assert truncated["poll_after"] == truncated["last_number"] == 3  # the cursor never passes the page
    assert [item["number"] for item in first["items"]] == list(range(last + 1))
    assert api.get(f"/api/searches/{running}/episodes", params={"after": last}).json()["items"] == []

    rng, pool = random.Random(7), []
    added = [add_episode(store, running, rng, pool).number for _ in range(3)]
    new = api.get(f"/api/searches/{running}/episodes", params={"after": last}).json()
    assert [item["number"] for item in new["items"]] == added == [last + 1, last + 2, last + 3]
    assert new["last_number"] == last + 3

    series = api.get(f"/api/searches/{running}/series", params={"after": last}).json()
    assert series["numbers"] == added and series["last_number"] == last + 3 == series["poll_after"]

    # An episode still running is listed, but the poll cursor stays before it until it finishes.
    unfinished = start_new_episode(store, running, rng)
    add_episode(store, running, rng, pool)
    page = api.get(f"/api/searches/{running}/episodes", params={"after": last + 3}).json()
    assert [item["status"] for item in page["items"]][0] == "running"
    assert page["last_number"] == unfinished + 1 and page["poll_after"] == unfinished - 1
    store.complete_episode(running, unfinished, reward=0.5)
    again = api.get(f"/api/searches/{running}/series", params={"after": page["poll_after"]}).json()
    assert again["numbers"][0] == unfinished and again["rewards"][0] == 0.5
    assert again["poll_after"] == unfinished + 1


def test_one_episode_in_full_with_its_graph(api, seeded):
    store, _, _, finished, _ = seeded
    record = store.get_episode(finished, 5)
    episode = api.get(f"/api/searches/{finished}/episodes/5").json()
    assert episode["architecture"] == record.architecture and episode["arch_hash"] == record.arch_hash
    assert episode["description"] == str(Architecture.from_dict(record.architecture))
    assert episode["attempts"] == record.attempts and episode["metrics"] == record.metrics
    svg = api.get(f"/api/searches/{finished}/episodes/5/graph.svg")
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert ET.fromstring(svg.text).tag == "{http://www.w3.org/2000/svg}svg"
    fpn = api.get("/api/architectures/fpn/graph.svg", params={"levels": "2,3,4,5,6"})
    assert fpn.status_code == 200 and ">P2<" in fpn.text and ">P7<" not in fpn.text
    assert ET.fromstring(fpn.text).tag.endswith("svg")
    bad = api.get("/api/architectures/fpn/graph.svg", params={"levels": "2,4"})
    assert bad.status_code == 422 and "levels: must be ascending and consecutive" in bad.json()["detail"]


def test_series_counts_unique_architectures_and_entropy(api, seeded):
    store, _, _, finished, _ = seeded
    series = api.get(f"/api/searches/{finished}/series").json()
    episodes = store.list_episodes(finished, limit=10_000)
    assert series["numbers"] == [episode.number for episode in episodes]
    assert series["rewards"] == [episode.reward for episode in episodes]
    assert sum(series["first_of_architecture"]) == len({episode.arch_hash for episode in episodes})
    first_seen = {}
    for episode in episodes:
        first_seen.setdefault(episode.arch_hash, episode.number)
    flagged = zip(series["numbers"], series["first_of_architecture"], strict=True)
    assert [number for number, first in flagged if first] == sorted(first_seen.values())
    assert len(series["entropy"]) == EPISODES // 8 and series["entropy_episodes"][:2] == [8, 16]
    assert series["entropy"][-1] == store.get_search(finished).last_entropy


def test_best_top_and_export(api, seeded):
    store, _, _, finished, _ = seeded
    best = api.get(f"/api/searches/{finished}/best").json()
    assert best["reward"] == store.get_search(finished).best_reward
    top = api.get(f"/api/searches/{finished}/top", params={"k": 5}).json()
    assert [item["rank"] for item in top] == [1, 2, 3, 4, 5]
    assert top[0]["episode"]["number"] == best["number"]
    assert len({item["episode"]["arch_hash"] for item in top}) == 5

    exported = api.get(f"/api/searches/{finished}/export", params={"to": "detector-config"})
    assert exported.headers["content-type"].startswith("application/yaml")
    config = DetectorTrainingConfig.model_validate(yaml.safe_load(exported.text))
    assert config.source.arch_hash == best["arch_hash"] and config.source.search_id == finished
    assert config.detector.neck.architecture == best["architecture"]

    several = api.get(f"/api/searches/{finished}/export", params={"to": "json", "top": 3}).json()
    assert [Architecture.from_dict(item).canonical_hash() for item in several] == [
        item["episode"]["arch_hash"] for item in top[:3]
    ]


@pytest.mark.parametrize(
    ("path", "code", "reason"),
    [
        ("/api/searches/999", 404, "search 999 does not exist"),
        ("/api/searches/1/episodes/99999", 404, "episode 99999"),
        ("/api/searches/0", 422, "path.search_id"),
        ("/api/searches/99999999999999", 422, "path.search_id"),
        ("/api/searches/1/episodes?limit=0", 422, "query.limit"),
        ("/api/searches/1/episodes?sort=bogus", 422, "query.sort"),
        ("/api/searches/1/episodes?after=3&sort=reward", 422, "after: lists new episodes by ascending number"),
        ("/api/searches/1/export?to=pdf", 422, "query.to"),
        ("/api/architectures/bifpn/graph.svg", 422, "path.name"),
    ],
)
def test_bad_requests_get_json_reasons(api, path, code, reason):
    response = api.get(path)
    assert response.status_code == code
    assert reason in response.json()["detail"]


def test_changes_need_the_token(api, seeded):
    _, _, _, finished, running = seeded
    for method, path in [
        ("POST", f"/api/searches/{running}/stop"),
        ("POST", f"/api/searches/{finished}/archive"),
        ("POST", f"/api/searches/{finished}/resume"),
        ("DELETE", f"/api/searches/{finished}?confirm=finished"),
        ("POST", "/api/searches"),
    ]:
        for headers in (JSON, {**JSON, "Authorization": "Bearer wrong"}):
            response = api.request(method, path, headers=headers)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
    assert api.get(f"/api/searches/{finished}").json()["archived"] is False  # refused means untouched


def test_state_rules_answer_409(api, seeded):
    store, _, root, finished, running = seeded
    assert api.post(f"/api/searches/{finished}/stop", headers=AUTH).status_code == 409
    resumed = api.post(f"/api/searches/{finished}/resume", headers=AUTH)
    assert resumed.status_code == 409 and "completed its budget" in resumed.json()["detail"]
    for method, path in [
        ("POST", f"/api/searches/{running}/archive"),
        ("DELETE", f"/api/searches/{running}?confirm=running"),
        ("POST", f"/api/searches/{running}/resume"),
    ]:
        response = api.request(method, path, headers=AUTH)
        assert response.status_code == 409 and "running" in response.json()["detail"], response.text

    config = search_config(root / "data" / "to-delete", episodes=2).model_dump(mode="json")
    created = api.post("/api/searches", headers=AUTH, json={"name": "to-delete", "config": config, "start": False})
    assert created.status_code == 201 and created.json()["runner"] is None
    search_id = created.json()["search"]["id"]
    duplicate = api.post("/api/searches", headers=AUTH, json={"name": "to-delete", "config": config, "start": False})
    assert duplicate.status_code == 409 and "already exists" in duplicate.json()["detail"]
    wrong = api.delete(f"/api/searches/{search_id}", params={"confirm": "something-else"}, headers=AUTH)
    assert wrong.status_code == 409 and "'to-delete'" in wrong.json()["detail"]
    assert api.post(f"/api/searches/{search_id}/archive", headers=AUTH).json()["archived"] is True
    assert "to-delete" not in {item["name"] for item in api.get("/api/searches").json()}
    assert "to-delete" in {item["name"] for item in api.get("/api/searches?include_archived=true").json()}
    assert api.delete(f"/api/searches/{search_id}", params={"confirm": "to-delete"}, headers=AUTH).status_code == 204
    assert api.get(f"/api/searches/{search_id}").status_code == 404
    assert store.get_search(finished).num_episodes == EPISODES  # others untouched


def test_an_unreachable_job_server_is_a_503_and_the_search_stays_as_it_was(tmp_path):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    config = search_config(tmp_path / "data" / "synthetic", episodes=2).model_dump(mode="json")
    nobody = f"http://127.0.0.1:{free_port()}"
    with serving(url, tmp_path, ray_address=nobody) as base:
        response = httpx.post(
            f"{base}/api/searches", headers=AUTH, json={"name": "nowhere", "config": config}, timeout=HTTP_TIMEOUT
        )
        assert response.status_code == 503, response.text
        assert "the runner could not be started" in response.json()["detail"]
        search = httpx.get(f"{base}/api/searches", timeout=HTTP_TIMEOUT).json()[0]
        assert search["status"] == "created"  # the claim was released: it can be started later
        assert search["started_at"] is None  # and a time budget has not started counting
        resumed = httpx.post(f"{base}/api/searches/{search['id']}/resume", headers=AUTH, timeout=HTTP_TIMEOUT)
        assert resumed.status_code == 503
        assert httpx.get(f"{base}/api/searches", timeout=HTTP_TIMEOUT).json()[0]["status"] == "created"


def test_a_stale_start_is_refused_instead_of_starting_a_second_runner(seeded, tmp_path, monkeypatch):
    store, url, _, _, _ = seeded
    monkeypatch.chdir(tmp_path)  # a launched runner would write its log under ./data/logs
    search = store.create_search("raced", search_config(tmp_path / "synthetic", episodes=2).model_dump(mode="json"))
    store.set_search_status(search.id, "running")  # another client won the race since `search` was read
    with pytest.raises(Conflict, match=f"search {search.id} is running, not created"):
        start_runner(store, search, url)
    assert store.get_search(search.id).status == "running" and not (tmp_path / "data").exists()
    store.set_search_status(search.id, "stopped")


def test_invalid_search_configs_name_the_field(api, seeded):
    config = search_config(seeded[2] / "data", episodes=2).model_dump(mode="json")
    config["budget"]["episodes"] = 0
    config["proxy"]["detector"]["neck"]["levels"] = [3, 4, 5, 6, 7]
    response = api.post("/api/searches", headers=AUTH, json={"config": config, "start": False})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "body.config.budget.episodes: Input should be greater than or equal to 1" in detail
    config["budget"]["episodes"] = 2
    mismatch = api.post("/api/searches", headers=AUTH, json={"config": config, "start": False})
    assert mismatch.status_code == 422
    assert (
        "controller.levels: [2, 3, 4, 5, 6] must equal the proxy neck's levels [3, 4, 5, 6, 7]"
        in mismatch.json()["detail"]
    )
    garbage = api.post("/api/searches", headers=AUTH, content=b"{not json")
    assert garbage.status_code in (400, 422) and garbage.json()["detail"]


def test_a_search_started_through_the_api_survives_an_api_restart(tmp_path):
    """POST /api/searches launches the CLI's runner in its own process; restarting the API leaves it be."""
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    config = search_config(tmp_path / "data" / "synthetic", episodes=4).model_dump(mode="json")
    port = free_port()
    with serving(url, tmp_path, port=port) as base:
        response = httpx.post(
            f"{base}/api/searches", headers=AUTH, json={"name": "via-api", "config": config}, timeout=HTTP_TIMEOUT
        )
        assert response.status_code == 201, response.text
        launch = response.json()
        assert launch["runner"].startswith("pid ")
        search_id = launch["search"]["id"]
    # The API is down now; the runner goes on. A new server on the same store sees it finish.
    with serving(url, tmp_path, port=port) as base:
        search = wait_finished(base, search_id)
        log = tmp_path / "data" / "logs" / f"search-{search_id}.log"
        assert search["status"] == "completed", log.read_text() if log.exists() else search
        episodes = httpx.get(f"{base}/api/searches/{search_id}/episodes", timeout=HTTP_TIMEOUT).json()["items"]
        assert [item["status"] for item in episodes].count("failed") == 0, episodes[0]["error"]
        assert search["num_episodes"] == 4 and search["best_reward"] is not None


def test_with_a_cluster_address_the_runner_is_a_ray_job(tmp_path, monkeypatch):
    """``nas serve --ray-address http://head:8265`` submits the runner to the cluster's job server."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the test cluster's job server takes no token
    dashboard_port = free_port()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard_port,
        },
    )
    try:
        url = f"sqlite:///{tmp_path / 'nas.db'}"
        config = search_config(tmp_path / "data" / "synthetic", episodes=2).model_dump(mode="json")
        with serving(url, tmp_path, ray_address=f"http://127.0.0.1:{dashboard_port}") as base:
            # A trial needs one node: the API asks the cluster how large its nodes are.
            too_large = {**config, "resources": {**config["resources"], "cpus_per_trial": 3}}
            refused = httpx.post(f"{base}/api/searches", headers=AUTH, json={"config": too_large}, timeout=HTTP_TIMEOUT)
            assert refused.status_code == 422, refused.text
            assert refused.json()["detail"] == (
                "config.resources.cpus_per_trial: 3 asked, the largest node of the Ray cluster at "
                f"http://127.0.0.1:{dashboard_port} has 2"
            )
            response = httpx.post(
                f"{base}/api/searches", headers=AUTH, json={"name": "as-job", "config": config}, timeout=HTTP_TIMEOUT
            )
            assert response.status_code == 201, response.text
            assert response.json()["runner"].startswith("Ray job raysubmit_")
            search_id = response.json()["search"]["id"]
            search = wait_finished(base, search_id)
        assert search["status"] == "completed" and search["num_episodes"] == 2, search
        jobs = JobSubmissionClient(f"http://127.0.0.1:{dashboard_port}")
        # The runner's own connection to the cluster is listed too, as a driver job.
        (job,) = [job for job in jobs.list_jobs() if job.type.value == "SUBMISSION"]
        deadline = time.monotonic() + 60
        while not job.status.is_terminal() and time.monotonic() < deadline:
            time.sleep(0.5)
            job = jobs.get_job_info(job.submission_id)
        assert job.status.value == "SUCCEEDED", jobs.get_job_logs(job.submission_id)[-3000:]
    finally:
        cluster.shutdown()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_fuzzing_the_schema_finds_no_server_errors(tmp_path, request, backend):
    """Schemathesis over the whole schema, NUL characters included (PostgreSQL stores none); searches it
    creates are stored but not started (hooks file)."""
    url = f"sqlite:///{tmp_path / 'nas.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    with EpisodeStore(url) as store:
        seed_search(store, "fuzzed", 20, tmp_path / "data")
    with serving(url, tmp_path) as base:
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "schemathesis"),
                "run",
                f"{base}/openapi.json",
                "--header",
                f"Authorization: Bearer {TOKEN}",
                # Changes are JSON only, bodiless ones too (stop, archive), as the dashboard sends them.
                "--header",
                "Content-Type: application/json",
                "--checks",
                "all",
                # Cross-field rules of the config (pydantic validators) are not in JSON Schema, so a
                # schema-valid body may still be refused with a 422 that names the rule.
                "--exclude-checks",
                "positive_data_acceptance",
                # Resuming a stored search launches a real runner per generated case; tested above.
                "--exclude-path-regex",
                "/resume$",
                "--generation-allow-x00",
                "true",
                "--max-examples",
                "25",
                "--seed",
                "1",
            ],
            cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert result.returncode == 0, result.stdout[-6000:]
    assert "Server error" not in result.stdout


def test_unnamed_searches_created_within_one_second_get_distinct_names(tmp_path):
    store = EpisodeStore(f"sqlite:///{tmp_path}/names.db")
    config = search_config(tmp_path / "synthetic", episodes=1)
    names = [create_search(store, config, None, default_stem="api").name for _ in range(20)]
    assert len(set(names)) == 20 and all(name.startswith("api-") for name in names)
