"""API benchmark: latency of the episode endpoints under load, next to optuna-dashboard, and dashboard load time.

    python -m bench.api [--sizes 400 10000] [--clients 4] [--seconds 15] [--write-rate 5]

For each store size, a real ``nas serve`` (uvicorn) on an SQLite store seeded with that many episodes
is hit by ``--clients`` concurrent clients for ``--seconds`` while a writer adds ``--write-rate``
episodes per second through the store (a busy search writes far less often). Endpoints:

- page: one page of 50 episodes at a random offset, by number;
- by-reward: the 50 best episodes (sorted by reward);
- incremental: ``?after=N`` a few episodes behind the newest, what a polling client asks;
- full load: the chart columns of every episode (``/series``, the dashboard's first load).

The peer is optuna-dashboard (its default server; gunicorn when installed) on an Optuna SQLite
storage holding the same number of trials with the same 35 categorical decisions, under the same
load and writer: ``/api/studies/ID?after=N`` is its incremental form, ``/api/studies/ID`` its full
load. Last, headless Chromium opens our dashboard and waits until the charts and tables are drawn.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from nas_service.store import EpisodeStore
from search_spaces.space import SearchSpace
from tests.live_server import free_port, serving
from tests.seeding import LEVELS, add_episode, seed_search

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
Request = Callable[[httpx.Client, int], str]
"""Sends one request given the newest item number; returns the endpoint's name."""


def load(
    base: str, requests: list[Request], newest: Callable[[], int], clients: int, seconds: float
) -> dict[str, list[float]]:
    """Latencies in ms per endpoint name, from ``clients`` threads cycling through ``requests``."""
    latencies: dict[str, list[float]] = defaultdict(list)
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(offset: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as session:
            turn = offset
            while time.monotonic() < deadline:
                request = requests[turn % len(requests)]
                start = time.perf_counter()
                name = request(session, newest())
                elapsed = (time.perf_counter() - start) * 1000
                with lock:
                    latencies[name].append(elapsed)
                turn += 1

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


@contextmanager
def writing(add: Callable[[], int], rate: float) -> Iterator[Callable[[], int]]:
    """Adds an item ``rate`` times a second in the background; yields a reader of the newest number."""
    state = {"newest": add(), "stop": False}

    def writer() -> None:
        while not state["stop"]:
            time.sleep(1 / rate)
            state["newest"] = add()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        yield lambda: state["newest"]
    finally:
        state["stop"] = True
        thread.join()


def checked(response: httpx.Response, name: str) -> str:
    response.raise_for_status()
    return name


def ours(folder: Path, size: int, clients: int, seconds: float, rate: float) -> tuple[dict[str, list[float]], str]:
    url = f"sqlite:///{folder / 'nas.db'}"
    store = EpisodeStore(url)
    started = time.perf_counter()
    search_id = seed_search(store, "bench", size, folder / "synthetic")
    print(f"  seeded {size} episodes in {time.perf_counter() - started:.0f} s")
    rng, pool = random.Random(1), []
    prefix = f"/api/searches/{search_id}"
    requests: list[Request] = [
        lambda s, n: checked(
            s.get(f"{prefix}/episodes", params={"limit": 50, "offset": random.randrange(max(1, n - 50))}), "page"
        ),
        lambda s, n: checked(
            s.get(f"{prefix}/episodes", params={"sort": "reward", "order": "desc", "limit": 50}), "by-reward"
        ),
        lambda s, n: checked(s.get(f"{prefix}/episodes", params={"after": n - 3}), "incremental"),
        lambda s, n: checked(s.get(f"{prefix}/series"), "full load"),
    ]
    with serving(url, folder) as base, writing(lambda: add_episode(store, search_id, rng, pool).number, rate) as newest:
        latencies = load(base, requests, newest, clients, seconds)
        dashboard = dashboard_load_seconds(base, search_id, newest())
    store.close()
    return latencies, "-" if dashboard is None else f"{dashboard:.2f} s"


def optuna_peer(folder: Path, size: int, clients: int, seconds: float, rate: float) -> dict[str, list[float]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{folder / 'optuna.db'}"
    study = optuna.create_study(study_name="bench", storage=url, direction="maximize")
    space = SearchSpace(LEVELS)
    rng = random.Random(0)
    distributions = {
        f"d{index}": optuna.distributions.CategoricalDistribution(list(range(8)))
        for index in range(space.num_decisions)
    }

    def trial() -> optuna.trial.FrozenTrial:
        params = {name: rng.randrange(8) for name in distributions}
        return optuna.trial.create_trial(params=params, distributions=distributions, value=rng.random())

    started = time.perf_counter()
    study.add_trials([trial() for _ in range(size)])
    print(f"  seeded {size} Optuna trials in {time.perf_counter() - started:.0f} s")
    study_id = study._study_id
    numbers = iter(range(size, 10**9))

    def add() -> int:
        study.add_trial(trial())
        return next(numbers)

    requests: list[Request] = [
        lambda s, n: checked(s.get(f"/api/studies/{study_id}", params={"after": n - 3}), "incremental"),
        lambda s, n: checked(s.get(f"/api/studies/{study_id}"), "full load"),
    ]
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "optuna-dashboard"), url, "--port", str(port), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{base}/api/studies/{study_id}")
        with writing(add, rate) as newest:
            return load(base, requests, newest, clients, seconds)
    finally:
        server.terminate()
        server.wait()


def _wait_for(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=60).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer")


def dashboard_load_seconds(base: str, search_id: int, episodes: int) -> float | None:
    """Seconds from navigation until the reward chart holds every episode and the episode table is drawn."""
    if not Path(CHROMIUM).exists():
        print(f"  {CHROMIUM} is missing (make browser): no dashboard timing")
        return None
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        start = time.perf_counter()
        page.goto(f"{base}/#/searches/{search_id}")
        page.wait_for_function(
            "n => Number(document.querySelector('[data-chart=reward]')?.dataset.points) >= n",
            arg=episodes,
            timeout=120_000,
        )
        page.wait_for_selector("table.episodes tbody tr[data-number]", timeout=120_000)
        elapsed = time.perf_counter() - start
        browser.close()
    return elapsed


def percentiles(values: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[94], cuts[98]


def report(size: int, name: str, ours_ms: list[float], peer_ms: list[float] | None, seconds: float) -> None:
    p50, p95, p99 = percentiles(ours_ms)
    line = f"| {size:>6} | {name:11} | {p50:7.1f} | {p95:7.1f} | {p99:7.1f} | {len(ours_ms) / seconds:6.1f} |"
    if peer_ms:
        q50, q95, q99 = percentiles(peer_ms)
        line += f" {q50:8.1f} | {q95:8.1f} | {q99:8.1f} | {q50 / p50:5.1f}x | {q95 / p95:5.1f}x |"
    else:
        line += " - | - | - | - | - |"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[400, 10_000])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument(
        "--write-rate", type=float, default=5.0, help="Episodes (trials) added per second during the load."
    )
    parser.add_argument(
        "--peer-sizes",
        type=int,
        nargs="*",
        default=[400],
        help="Sizes at which to run optuna-dashboard too (seeding Optuna takes ~0.1 s a trial here).",
    )
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as folder:
            print(f"{size} episodes: nas serve")
            latencies, dashboard = ours(Path(folder), size, args.clients, args.seconds, args.write_rate)
            peer = {}
            if size in args.peer_sizes:
                print(f"{size} trials: optuna-dashboard")
                peer = optuna_peer(Path(folder), size, args.clients, args.seconds, args.write_rate)
            rows.append((size, latencies, peer, dashboard))
    print(f"\n{args.clients} concurrent clients for {args.seconds:.0f} s each, ", end="")
    print(f"a writer adding {args.write_rate:g} per second.")
    print("Latency in ms; ratio = optuna-dashboard / nas serve (above 1: we are faster).\n")
    print(
        "| store | endpoint | p50 | p95 | p99 | req/s | optuna p50 | optuna p95 | optuna p99 | p50 ratio | p95 ratio |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for size, latencies, peer, _ in rows:
        for name in ("page", "by-reward", "incremental", "full load"):
            report(size, name, latencies[name], peer.get(name), args.seconds)
    print()
    for size, _, _, dashboard in rows:
        print(f"dashboard drawn with {size} episodes (Chromium, first load): {dashboard}")


if __name__ == "__main__":
    main()
