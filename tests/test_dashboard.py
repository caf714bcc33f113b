"""The dashboard in a real browser: ``nas serve`` on a seeded SQLite store, driven by Debian's Chromium.

One search of 400 episodes is left "running", so its page keeps polling: the live-update test adds an
episode to the store, first running and then finished with the best reward, and waits for the page to
show it in the charts, the tables and the summary. Expected values come from the API at test time.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlsplit
from urllib.request import urlopen

import pytest
from playwright.sync_api import expect, sync_playwright

from nas_service.store import EpisodeStore
from tests.live_server import free_port
from tests.seeding import seed_search, start_new_episode

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
TOKEN = "dashboard-token"
EPISODES = 400
TIMEOUT_MS = 15_000


@dataclass
class Site:
    base: str
    store: EpisodeStore
    running: int
    """A 400-episode search left running: its page polls."""

    def get(self, path: str):
        with urlopen(self.base + path, timeout=10) as response:
            return json.load(response)


def wait_healthy(base: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()
        try:
            with urlopen(f"{base}/api/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (URLError, ConnectionError):
            time.sleep(0.2)
    raise AssertionError(f"nas serve did not answer within 60 s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{root / 'nas.db'}"
    store = EpisodeStore(url)  # creates the schema before the server opens the file
    port, log = free_port(), root / "serve.log"
    with log.open("wb") as output:  # the server keeps its own copy of the descriptor
        server = subprocess.Popen(
            # The console script is the real entry point; the repo as working directory gives it the presets.
            [str(Path(sys.executable).with_name("nas")), "serve", "--port", str(port), "--db", url],
            cwd=REPO, env={**os.environ, "NAS_API_TOKEN": TOKEN}, stdout=output, stderr=subprocess.STDOUT,
        )
    try:
        # Seeding takes as long as the server's start-up: do both at once.
        running = seed_search(store, "coco-400", EPISODES, root / "data", status="running")
        seed_search(store, "small-finished", 12, root / "data", seed=1)
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, server, log)
        yield Site(base, store, running)
    finally:
        server.terminate()
        server.wait(timeout=30)
        store.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser`")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def errors() -> list[str]:
    """Console errors (each with the URL it concerns, in brackets) and uncaught exceptions of the test's tab."""
    return []


@pytest.fixture
def page(browser, errors):
    """A fresh 1280x800 tab."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    def console(message) -> None:
        if message.type == "error":
            errors.append(f"{message.text} [{message.location['url']}]")

    page.on("console", console)
    page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    yield page
    context.close()


def episode_rows(page, table: str = "episodes"):
    return page.locator(f"table.{table} tbody tr[data-number]")


def wait_loaded(page, selector: str) -> None:
    """Wait until the image has decoded (an SVG that failed to load has no natural width)."""
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=page.locator(selector).element_handle())


def newest_point(page) -> dict:
    """Where the reward chart's newest episode is: its right edge (the cursor snaps to the nearest x)."""
    box = page.locator("[data-chart=reward] .u-over").bounding_box()
    return {"x": box["width"] - 1, "y": box["height"] / 2}


def test_search_list_and_start_form(site, page, errors):
    page.goto(site.base + "/")
    expect(page.locator("table.searches tbody tr[data-id]")).to_have_count(2)
    names = page.locator("table.searches tbody td:first-child a")
    assert sorted(names.all_inner_texts()) == ["coco-400", "small-finished"]
    running = site.get(f"/api/searches/{site.running}")
    row = page.locator(f"table.searches tr[data-id='{site.running}']")
    expect(row.locator(".badge")).to_have_text("running")
    expect(row).to_contain_text(f"{running['best_reward']:.4f}")
    expect(row).to_contain_text(f"{running['num_episodes']} / {EPISODES}")

    presets = site.get("/api/config-presets")
    assert presets, "configs/search/ has presets"
    expect(page.locator("select[name=preset] option")).to_have_text([preset["name"] for preset in presets])
    for preset in presets:
        page.select_option("select[name=preset]", preset["name"])
        assert json.loads(page.input_value("textarea[name=config]")) == preset["config"]
        assert page.input_value("input[name=episodes]") == str(preset["config"]["budget"]["episodes"])

    # A config the server refuses: the form asks for the token once, then shows the API's detail.
    page.click("details summary")
    page.fill("textarea[name=config]", json.dumps({"controller": {"levels": "P3"}}))
    with refused(page, 401, "/api/searches"):
        page.click("button[type=submit]")
    with refused(page, 422, "/api/searches"):
        give_token(page)
    error = page.locator(".form-error")
    expect(error).to_contain_text("controller.levels")
    expect(error).to_contain_text("proxy")
    assert page.evaluate("localStorage.getItem('nas-fpn.token')") == TOKEN
    assert len(site.get("/api/searches?include_archived=true")) == 2, "nothing was started"  # the two seeded
    assert_only_refusals(errors, [(401, "/api/searches"), (422, "/api/searches")])


def test_search_page_draws_charts_graphs_and_tables(site, page, errors, tmp_path):
    sid = site.running
    series = site.get(f"/api/searches/{sid}/series")
    summary = site.get(f"/api/searches/{sid}")
    best = site.get(f"/api/searches/{sid}/top?k=10")[0]["episode"]
    page.goto(f"{site.base}/#/searches/{sid}")

    # Charts: real canvases with one x value per episode (entropy: one per controller update).
    episodes = len(series["numbers"])
    for name, points in {"reward": episodes, "unique": episodes, "entropy": len(series["entropy"])}.items():
        chart = page.locator(f"[data-chart={name}]")
        expect(chart).to_have_attribute("data-points", str(points))
        box = chart.locator("canvas").bounding_box()
        assert box["width"] > 300 and box["height"] > 100, (name, box)  # drawn at a readable size, not collapsed
    unique = sum(series["first_of_architecture"])
    expect(page.locator("[data-note=unique]")).to_have_text(f"{unique} unique in {episodes} episodes")
    entropy_note = f"{series['entropy'][-1]:.3f} after {series['entropy_episodes'][-1]} episodes"
    expect(page.locator("[data-note=entropy]")).to_have_text(entropy_note)
    # The seed cell's band: its reward +- the proxy's paired noise the search carries (tests/seeding.py).
    comparison = summary["seed_comparison"]
    noise_note = f"band: seed cell ± the proxy's paired noise ({comparison['noise']:.4f})"
    expect(page.locator("[data-note=reward]")).to_contain_text(noise_note)
    lead = comparison["best_reward"] - comparison["seed_reward"]
    verdict = "beyond the noise" if comparison["beats_seed"] else "within the noise"
    versus = page.locator(".stat", has_text="Best vs seed cell")
    expect(versus.locator("dd")).to_contain_text(f"{lead:+.4f}")
    expect(versus.locator("small")).to_have_text(f"{lead / comparison['noise']:.1f}× noise: {verdict}")

    # Summary and tables: the first page of episodes and the top 10, formatted, with export links.
    expect(page.locator(".stats")).to_contain_text(f"{summary['best_reward']:.4f}")
    expect(page.locator(".stats")).to_contain_text(f"{episodes} / {EPISODES}")
    expect(episode_rows(page)).to_have_count(20)  # tables.js: 20 rows a page
    expect(page.locator(".page-info")).to_have_text(f"1–20 of {episodes}")
    expect(episode_rows(page, "top")).to_have_count(10)  # tables.js: TOP_K
    first = episode_rows(page, "top").first
    expect(first).to_have_attribute("data-number", str(best["number"]))
    for text in (f"{best['reward']:.4f}", f"{best['flops'] / 1e9:.2f} G", best["arch_hash"][:10], best["description"]):
        expect(first).to_contain_text(text)
    for to in ("detector-config", "json"):
        expect(page.locator(f"a.export[data-to={to}]")).to_have_attribute("href", f"/api/searches/{sid}/export?to={to}")

    # Graphs: the best cell next to FPN.
    expect(page.locator("img.best-graph")).to_have_attribute("src", graph_path(sid, best["number"]))
    wait_loaded(page, "img.best-graph")
    # The seeded search's controller levels (tests/seeding.py: LEVELS).
    expect(page.locator("img.fpn-graph")).to_have_attribute("src", "/api/architectures/fpn/graph.svg?levels=2,3,4,5,6")
    wait_loaded(page, "img.fpn-graph")
    keep_screenshot(page, tmp_path, "dashboard.png", full_page=True)
    assert errors == []


def test_episode_table_sorts_filters_and_pages(site, page, errors):
    sid = site.running
    best = site.get(f"/api/searches/{sid}")["best_episode_number"]
    total = site.store.count_episodes(sid)
    page.goto(f"{site.base}/#/searches/{sid}")
    expect(episode_rows(page).first).to_have_attribute("data-number", "0")

    page.click("th[data-sort=reward] button")
    expect(page.locator("th[data-sort=reward]")).to_have_attribute("aria-sort", "descending")
    expect(episode_rows(page).first).to_have_attribute("data-number", str(best))
    page.click("th[data-sort=number] button")
    page.click("th[data-sort=number] button")
    expect(page.locator("th[data-sort=number]")).to_have_attribute("aria-sort", "descending")
    expect(episode_rows(page).first).to_have_attribute("data-number", str(total - 1))

    page.click("[data-page=next]")
    expect(page.locator(".page-info")).to_have_text(f"21–40 of {total}")
    expect(episode_rows(page).first).to_have_attribute("data-number", str(total - 21))

    failed = site.store.count_episodes(sid, status="failed")
    page.select_option("select[name=status]", "failed")
    expect(page.locator(".page-info")).to_have_text(f"1–{min(failed, 20)} of {failed}")
    assert set(page.locator("table.episodes tbody .badge").all_inner_texts()) == {"failed"}
    assert errors == []


def test_refused_action_shows_the_reason(site, page, errors):
    page.goto(f"{site.base}/#/searches/{site.running}")
    archive = f"/api/searches/{site.running}/archive"
    with refused(page, 401, archive):
        page.click("[data-action=archive]")
    with refused(page, 409, archive):
        give_token(page)
    expect(page.locator(".action-message")).to_have_text(
        f"search {site.running} is running; stop it before it can be archived"
    )
    assert not site.get(f"/api/searches/{site.running}")["archived"]
    assert_only_refusals(errors, [(401, archive), (409, archive)])


def test_live_update_and_episode_view(site, page, errors, tmp_path):
    sid = site.running
    episodes = len(site.get(f"/api/searches/{sid}/series")["numbers"])
    page.goto(f"{site.base}/#/searches/{sid}")
    page.click("th[data-sort=reward] button")  # the new best must climb to the top of this page
    expect(page.locator("[data-chart=reward]")).to_have_attribute("data-points", str(episodes))

    # A new episode shows up while it trains; when it finishes, its result replaces the running point.
    number = start_new_episode(site.store, sid, random.Random(7))
    expect(page.locator("[data-chart=reward]")).to_have_attribute("data-points", str(episodes + 1))
    site.store.complete_episode(sid, number, 0.9, {"AP": 0.9}, flops=12 * 10**9, params=4 * 10**6, train_seconds=95.0)
    expect(episode_rows(page).first).to_have_attribute("data-number", str(number))
    expect(episode_rows(page, "top").first).to_have_attribute("data-number", str(number))
    expect(page.locator(".stats")).to_contain_text("0.9000")
    expect(page.locator("img.best-graph")).to_have_attribute("src", graph_path(sid, number))
    wait_loaded(page, "img.best-graph")
    expect(page.locator("[data-chart=reward]")).to_have_attribute("data-points", str(episodes + 1))
    page.hover("[data-chart=reward] .u-over", position=newest_point(page))
    legend = page.locator("[data-chart=reward] .u-legend .u-series .u-value")
    expect(legend.nth(0)).to_have_text(str(number))
    expect(legend.nth(1)).to_have_text("0.9000")  # the "completed" series

    # The episode view, from a chart point and from a table row.
    page.click("[data-chart=reward] .u-over", position=newest_point(page))
    dialog = page.locator("#episode-dialog")
    expect(page.locator("#episode-title")).to_have_text(f"Episode {number}")
    assert page.url.endswith(f"#/searches/{sid}/episodes/{number}")
    expect(dialog).to_contain_text("0.9000")
    expect(dialog).to_contain_text("1 min 35 s")  # train_seconds=95.0 above
    wait_loaded(page, "#episode-dialog img.episode-graph")
    page.click("#episode-dialog .close")
    expect(dialog).to_be_hidden()
    row = episode_rows(page).nth(3)
    clicked = row.get_attribute("data-number")
    row.locator("td:nth-child(3)").click()
    expect(page.locator("#episode-title")).to_have_text(f"Episode {clicked}")
    expect(dialog).to_be_visible()
    wait_loaded(page, "#episode-dialog img.episode-graph")
    keep_screenshot(page, tmp_path, "dashboard-episode.png")
    assert errors == []


def give_token(page) -> None:
    """Answer the dashboard's token prompt (the server refused a change without it)."""
    page.fill("#token-dialog input[name=token]", TOKEN)
    page.click("#token-dialog button[value=ok]")


def refused(page, status: int, path: str):
    """Within the block, wait for the console error the browser logs when a request to ``path`` is
    refused with ``status`` (Chromium: "Failed to load resource: ... status of 401 ...")."""
    return page.expect_console_message(
        lambda message: message.type == "error"
        and f"status of {status} " in message.text
        and urlsplit(message.location["url"]).path == path
    )


def assert_only_refusals(errors: list[str], refusals: list[tuple[int, str]]) -> None:
    """The tab's only console errors are the refused requests ``refusals`` ((status, path) each), each once."""
    seen = []
    for error in errors:
        match = re.fullmatch(r"Failed to load resource: .*status of (\d{3}) .*\[(.+)\]", error)
        seen.append((int(match.group(1)), urlsplit(match.group(2)).path) if match else error)
    assert sorted(seen, key=str) == sorted(refusals, key=str), errors


def graph_path(search_id: int, number: int) -> str:
    return f"/api/searches/{search_id}/episodes/{number}/graph.svg"


def keep_screenshot(page, tmp_path: Path, name: str, full_page: bool = False) -> None:
    """A screenshot in the test's artefacts, copied to out/ (git-ignored) for people to look at."""
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=full_page)
    out = REPO / "out"
    out.mkdir(exist_ok=True)
    shutil.copy(shot, out / name)
