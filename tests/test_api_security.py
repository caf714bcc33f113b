"""The API locked down, over a real ``nas serve`` (uvicorn on loopback) with no token, on PostgreSQL:
other sites' pages and other names for the server are refused, request bodies name files under the
data roots only and never make the server open one, sizes stay within the product's and the machine's.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from nas_service.store import EpisodeStore
from proxy_trainer import ProxyConfig
from search_spaces import known_architecture
from tests.live_server import HTTP_TIMEOUT, TOKEN, serving
from tests.seeding import LEVELS, search_config, seed_search
from tests.test_store import postgres_url  # noqa: F401  (a fresh PostgreSQL database, dropped afterwards)

JSON = {"Content-Type": "application/json"}
TRACEBACK = """Traceback (most recent call last):
  File "/srv/nas/nas_service/runner.py", line 48, in proxy_trial
    result = train_proxy(Architecture.from_dict(config["architecture"]), ProxyConfig.model_validate(config))
             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/srv/nas/proxy_trainer/trainer.py", line 91, in train_proxy
    raise FloatingPointError(f"loss is {loss} at iteration {iteration}")
FloatingPointError: loss is nan at iteration 3
"""


@dataclass
class Server:
    base: str
    root: Path
    """The server's working directory; its data root is ``root / "data"``."""
    store: EpisodeStore
    stopped: int
    """A stopped search: a resume would start a runner."""

    def url(self, path: str) -> str:
        return self.base + path

    def host(self, name: str) -> str:
        """A Host header naming this server's port under ``name``."""
        return f"{name}:{self.base.rsplit(':', 1)[1]}"

    def searches(self) -> list[dict]:
        return httpx.get(self.url("/api/searches?include_archived=true"), timeout=HTTP_TIMEOUT).json()


@pytest.fixture(scope="module")
def server(tmp_path_factory, postgres_url) -> Iterator[Server]:  # noqa: F811
    root = tmp_path_factory.mktemp("locked")
    (root / "data").mkdir()
    store = EpisodeStore(postgres_url)
    stopped = seed_search(store, "stopped", 4, root / "data" / "synthetic", status="stopped")
    try:
        with serving(postgres_url, root, token=None) as base:
            yield Server(base, root, store, stopped)
    finally:
        store.close()


def config(server: Server, **changes: Any) -> dict:
    """A valid search config (synthetic data under the data root), with ``changes`` by dotted path."""
    data = search_config(server.root / "data" / "synthetic", episodes=2).model_dump(mode="json")
    for path, value in changes.items():
        *parents, name = path.split(".")
        section = data
        for parent in parents:
            if section.get(parent) is None:  # e.g. proxy.base, off by default
                section[parent] = {}
            section = section[parent]
        section[name] = value
    return data


def coco(server: Server, **paths: str) -> dict:
    """The proxy dataset as four COCO paths under the data root, with ``paths`` replacing some."""
    data = server.root / "data" / "coco"
    dataset = {
        "train_annotations": str(data / "train.json"),
        "train_images": str(data / "train"),
        "val_annotations": str(data / "val.json"),
        "val_images": str(data / "val"),
    }
    return {**dataset, **paths}


def create(server: Server, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(server.url("/api/searches"), json=body, headers=headers, timeout=30)


def assert_refused(response: httpx.Response, code: int, *words: str) -> str:
    """The response is ``code`` with a JSON problem whose detail contains ``words``; returns the detail."""
    assert response.status_code == code, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, detail
    return detail


# -- other sites' pages --------------------------------------------------------------------------------


def test_same_origin_json_changes_work_without_a_token(server):
    body = {"name": "same-origin", "config": config(server), "start": False}
    created = create(server, body, Origin=server.base)
    assert created.status_code == 201, created.text
    search_id = created.json()["search"]["id"]
    # A bodiless change declares JSON too, as the dashboard does; localhost is this server as well.
    localhost = server.base.replace("127.0.0.1", "localhost")
    archived = httpx.post(
        server.url(f"/api/searches/{search_id}/archive"),
        headers={**JSON, "Origin": localhost, "Host": server.host("localhost")},
        timeout=HTTP_TIMEOUT,
    )
    assert archived.status_code == 200 and archived.json()["archived"] is True, archived.text


@pytest.mark.parametrize(
    ("headers", "body", "code", "reason"),
    [
        # The request: another site's form posting an empty body.
        ({"Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded"}, b"", 403, "Origin"),
        ({"Origin": "http://evil.example", **JSON}, b"{}", 403, "Origin"),
        ({"Origin": "null", **JSON}, b"{}", 403, "Origin"),  # sandboxed frames and file:// pages
        ({"Origin": "http://127.0.0.1:1", **JSON}, b"{}", 403, "Origin"),  # another port is another site
        ({"Origin": "http://127.0.0.1.evil.example", **JSON}, b"{}", 403, "Origin"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"force=true", 415, "Content-Type"),
        ({"Content-Type": "multipart/form-data; boundary=x"}, b"--x--\r\n", 415, "Content-Type"),
        ({"Content-Type": "text/plain"}, b'{"force": true}', 415, "Content-Type"),
        ({}, b"", 415, "Content-Type"),  # what fetch(url, {method: "POST", mode: "no-cors"}) sends
    ],
)
def test_changes_from_other_pages_or_not_json_are_refused(server, headers, body, code, reason):
    response = httpx.post(
        server.url(f"/api/searches/{server.stopped}/resume"), headers=headers, content=body, timeout=HTTP_TIMEOUT
    )
    assert_refused(response, code, reason)
    assert server.store.get_search(server.stopped).status == "stopped"
    assert not (server.root / "data" / "logs").exists(), "no runner was launched"


def test_other_sites_cannot_read_either(server):
    response = httpx.get(server.url("/api/searches"), headers={"Origin": "http://evil.example"}, timeout=HTTP_TIMEOUT)
    assert_refused(response, 403, "Origin")
    assert httpx.get(
        server.url("/api/searches"), headers={"Origin": server.base}, timeout=HTTP_TIMEOUT
    ).status_code == 200


# -- other names for the server (DNS rebinding) ----------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.nip.io:{port}"])
def test_a_foreign_host_is_refused_for_every_route(server, host):
    """After DNS rebinding, evil.example resolves to 127.0.0.1: the browser connects here with that Host."""
    host = host.format(port=server.base.rsplit(":", 1)[1])
    for method, path, body in [
        ("GET", "/api/searches", None),
        ("GET", "/", None),
        ("POST", f"/api/searches/{server.stopped}/resume", b"{}"),
    ]:
        response = httpx.request(method, server.url(path), headers={"Host": host, **JSON}, content=body)
        assert_refused(response, 403, "is not a name of this server", "--allowed-host")
    assert server.store.get_search(server.stopped).status == "stopped"


def test_the_host_check_runs_on_the_raw_connection(server):
    """The same over a bare socket, as a rebound browser would send it (no client library in between)."""
    port = int(server.base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(b"GET /api/searches HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 ") and b"content-type: application/json" in head.lower()
    assert b"is not a name of this server" in body


def test_allowed_hosts_are_configurable_and_checked_with_a_token(tmp_path):
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    with serving(url, tmp_path, options=["--allowed-host", "nas.example", "--allowed-host", "NAS2.example."]) as base:
        port = base.rsplit(":", 1)[1]
        auth = {"Authorization": f"Bearer {TOKEN}", **JSON}
        body = {"config": search_config(tmp_path / "data" / "synthetic", episodes=2).model_dump(mode="json")}
        for host in (f"nas.example:{port}", "nas2.example", f"localhost:{port}", f"[::1]:{port}"):
            assert httpx.get(
                f"{base}/api/searches", headers={"Host": host}, timeout=HTTP_TIMEOUT
            ).status_code == 200, host
        refused = httpx.post(
            f"{base}/api/searches", headers={**auth, "Host": f"evil.example:{port}"}, json=body, timeout=HTTP_TIMEOUT
        )
        assert_refused(refused, 403, "evil.example", "nas.example")
        assert httpx.get(f"{base}/api/searches", timeout=HTTP_TIMEOUT).json() == []


# -- files named in a request ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def outside(server) -> Path:
    """A data-root symlink to a folder outside the data roots, with a file in that folder."""
    folder = server.root / "elsewhere"
    folder.mkdir()
    (folder / "train.json").write_text('{"images": [], "annotations": [], "categories": []}')
    (server.root / "data" / "link").symlink_to(folder)
    return folder


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"proxy.dataset": {"train_annotations": "/etc/passwd"}}, "proxy.dataset.train_annotations"),
        ({"proxy.dataset": {"val_images": "data/../../../../etc"}}, "proxy.dataset.val_images"),
        ({"proxy.dataset": {"val_annotations": "data/coco/../../elsewhere/val.json"}}, "proxy.dataset.val_annotations"),
        ({"proxy.dataset": {"train_annotations": "data/link/train.json"}}, "proxy.dataset.train_annotations"),
        ({"proxy.dataset": {"train_images": "{root}/data/link/../../../etc"}}, "proxy.dataset.train_images"),
        ({"proxy.dataset.synthetic.root": "/tmp/nas-outside/synthetic"}, "proxy.dataset.synthetic.root"),
        ({"proxy.dataset.synthetic.root": "data/../synthetic"}, "proxy.dataset.synthetic.root"),
        ({"proxy.detector.backbone.weights": "/etc/passwd"}, "proxy.detector.backbone.weights"),
        ({"proxy.detector.backbone.weights": "data/link/train.json"}, "proxy.detector.backbone.weights"),
    ],
)
def test_paths_outside_the_data_roots_are_refused(server, outside, changes, field):
    before = len(server.searches())
    changes = {
        key: {**coco(server), **{k: v.format(root=server.root) for k, v in value.items()}}
        if key == "proxy.dataset"
        else value
        for key, value in changes.items()
    }
    response = create(server, {"config": config(server, **changes)})  # and start it
    assert_refused(response, 422, f"config.{field}:", "outside the server's data roots", str(server.root / "data"))
    assert len(server.searches()) == before


def test_proxy_base_paths_are_confined_too(server):
    if "base" not in ProxyConfig.model_fields:
        pytest.fail("proxy_trainer.ProxyConfig has no base section any more: drop this test")
    for field in ("path", "cache_dir"):
        response = create(server, {"config": config(server, **{f"proxy.base.{field}": "/etc/nas"}), "start": False})
        assert_refused(response, 422, f"config.proxy.base.{field}:", "outside the server's data roots")


@pytest.mark.parametrize(
    "field", ["proxy.detector.neck.architecture", "controller.seed_architecture", "proxy.base.architecture"]
)
def test_architectures_come_by_name_or_inline_never_as_a_server_file(server, field):
    if field.startswith("proxy.base") and "base" not in ProxyConfig.model_fields:
        pytest.fail("proxy_trainer.ProxyConfig has no base section any more: drop this case")
    details = []
    for path in ("/etc/passwd", "/etc/no-such-file.json", str(server.root / "data" / "cell.json")):
        response = create(server, {"config": config(server, **{field: path}), "start": False})
        details.append(assert_refused(response, 422, f"{field}:", "not a known architecture").replace(path, "X"))
    assert details[0] == details[1] == details[2], "the answer tells nothing about the file"
    inline = known_architecture("nasfpn", LEVELS).to_dict()
    accepted = create(server, {"name": f"inline-{field}", "config": config(server, **{field: inline}), "start": False})
    assert accepted.status_code == 201, accepted.text


@contextmanager
def waiting_fifo(path: Path) -> Iterator[Path]:
    """A FIFO whose writer waits for its first reader; on exit, asserts the test itself was that reader.

    Opening a FIFO for writing blocks until someone opens it for reading: had the server opened it,
    the writer would have sent its message there, and the test would read nothing.
    """
    os.mkfifo(path)
    message = b"the first reader"

    def write() -> None:
        try:
            with path.open("wb") as out:
                out.write(message)
        except BrokenPipeError:  # a reader came and went
            pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    yield path
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        writer.join(timeout=60)
        assert not writer.is_alive(), "the writer never got its reader"
        try:
            received = os.read(reader, 100)
        except OSError as error:
            assert error.errno == errno.EAGAIN
            received = b""
    finally:
        os.close(reader)
    assert received == message, "someone read the FIFO before the test did"


def test_a_fifo_named_in_a_body_is_never_opened(server):
    data = server.root / "data"
    with waiting_fifo(data / "inside.fifo") as inside, waiting_fifo(server.root / "outside.fifo") as out:
        for field in ("proxy.detector.neck.architecture", "controller.seed_architecture"):
            response = create(server, {"config": config(server, **{field: str(inside)}), "start": False})
            assert_refused(response, 422, "not a known architecture")
        refused = create(server, {"config": config(server, **{"proxy.dataset": coco(server, val_images=str(out))})})
        assert_refused(refused, 422, "proxy.dataset.val_images", "outside the server's data roots")
        dataset = coco(server, val_images=str(inside))
        body = {"name": "fifo-inside", "config": config(server, **{"proxy.dataset": dataset})}
        stored = create(server, {**body, "start": False})  # a data-root path is accepted, still unopened
        assert stored.status_code == 201, stored.text
        assert stored.json()["search"]["status"] == "created"


# -- sizes -------------------------------------------------------------------------------------------------


def machine_cpus() -> int:
    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"proxy.dataset.synthetic.image_size": 10**9}, "proxy.dataset.synthetic.image_size"),
        ({"proxy.dataset.synthetic.num_train": 10**12}, "proxy.dataset.synthetic.num_train"),
        ({"proxy.dataset.synthetic.num_val": 10**12}, "proxy.dataset.synthetic.num_val"),
        ({"proxy.train.iterations": 10**18}, "proxy.train.iterations"),
        ({"proxy.train.batch_size": 10**6}, "proxy.train.batch_size"),
        ({"proxy.dataset.num_workers": 10**6}, "proxy.dataset.num_workers"),
        ({"proxy.train.max_size": 10**6}, "proxy.train.max_size"),
        ({"proxy.train.short_sides": [64, 10**6]}, "proxy.train.short_sides"),
        ({"proxy.test.batch_size": 10**6}, "proxy.test.batch_size"),
        ({"proxy.test.short_side": 10**6}, "proxy.test.short_side"),
        ({"budget.episodes": 10**9}, "budget.episodes"),
        ({"budget.unique": 10**9}, "budget.unique"),
        ({"resources.concurrency": 10**6}, "resources.concurrency"),
        ({"resources.cpus_per_trial": 10**6}, "resources.cpus_per_trial"),
        ({"resources.gpus_per_trial": 10**6}, "resources.gpus_per_trial"),
    ],
)
def test_sizes_beyond_the_product_limits_are_refused(server, changes, field):
    response = create(server, {"config": config(server, **changes), "start": False})
    detail = assert_refused(response, 422, field)
    assert "less than or equal to" in detail


def test_trials_larger_than_this_machine_are_refused(server):
    cpus = machine_cpus()
    response = create(server, {"config": config(server, **{"resources.cpus_per_trial": cpus + 1}), "start": False})
    assert_refused(response, 422, f"config.resources.cpus_per_trial: {cpus + 1} asked, this machine has {cpus}")
    gpus = torch.cuda.device_count()
    response = create(server, {"config": config(server, **{"resources.gpus_per_trial": gpus + 1}), "start": False})
    assert_refused(response, 422, f"config.resources.gpus_per_trial: {gpus + 1} asked, this machine has {gpus}")
    whole_machine = config(server, **{"resources.cpus_per_trial": cpus})
    fits = create(server, {"name": "fits", "config": whole_machine, "start": False})
    assert fits.status_code == 201, fits.text


def test_a_body_beyond_a_megabyte_is_refused_unread(server):
    body = {"name": "x" * (1 << 20), "config": config(server), "start": False}
    assert_refused(create(server, body), 413, "Content-Length")


# -- what PostgreSQL cannot store, and what a response must not show ----------------------------------


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"name": "nul\x00name"}, "name"),
        ({"config": {"proxy.dataset.synthetic.root": "data/syn\x00thetic"}}, "config.proxy.dataset.synthetic.root"),
        ({"config": {"proxy.detector.neck.architecture": {"cells\x00": []}}}, "proxy.detector.neck.architecture"),
    ],
)
def test_nul_characters_are_refused_not_a_server_error(server, body, where):
    request = {"name": body.get("name", "nul"), "config": config(server, **body.get("config", {})), "start": False}
    assert_refused(create(server, request), 422, f"{where}: contains a NUL character")


def test_episode_errors_are_messages_not_tracebacks(server):
    store = server.store
    search = store.create_search("failing", config(server), budget_episodes=2)
    store.set_search_status(search.id, "running")
    arch = httpx.get(server.url("/api/architectures"), timeout=HTTP_TIMEOUT).json()[0]
    store.add_episode(search.id, 0, arch["architecture"], arch["arch_hash"])
    store.start_episode(search.id, 0, worker="node-0")
    store.fail_episode(search.id, 0, TRACEBACK, reward=0.0)
    store.set_search_status(search.id, "failed", error=TRACEBACK)
    shown = [
        httpx.get(server.url(f"/api/searches/{search.id}/episodes/0"), timeout=HTTP_TIMEOUT).json()["error"],
        httpx.get(server.url(f"/api/searches/{search.id}/episodes"), timeout=HTTP_TIMEOUT).json()["items"][0]["error"],
        httpx.get(server.url(f"/api/searches/{search.id}"), timeout=HTTP_TIMEOUT).json()["error"],
    ]
    assert shown == ["FloatingPointError: loss is nan at iteration 3"] * 3
    assert store.get_episode(search.id, 0).error == TRACEBACK  # the store keeps what the runner wrote
