"""The multi-node path of docs/cluster.md, for real: a search on a 2-node Ray cluster whose nodes are
started by the containers' entry point (docker/ray-node.sh), with PostgreSQL as the store. The head
node is lost mid-search (runner, head and worker killed with SIGKILL), a new cluster comes up, and once
the dead runner's lease has expired, `nas search resume ID` (no flag) finishes the search from what
PostgreSQL holds.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import yaml
from sqlalchemy import create_engine, text

from controller.controller import Controller
from nas_service.store import EpisodeStore
from tests.seeding import search_config
from tests.test_search import LEASE_SECONDS, _nas, data_root  # noqa: F401  (data_root is a fixture)
from tests.test_search import wait_for_the_lease_to_expire
from tests.test_store import postgres_url  # noqa: F401  (a fresh PostgreSQL database, dropped afterwards)

REPO = Path(__file__).resolve().parent.parent
NODE_SCRIPT = REPO / "docker" / "ray-node.sh"
EPISODES = 4
# Episodes of several seconds, so that the head is lost mid-search.
ITERATIONS = 20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Ray's token authentication, as docs/cluster.md recommends: every node and driver of the cluster
# gets the same RAY_AUTH_TOKEN. It also makes the test independent of a ~/.ray/auth_token that other
# local Ray sessions may have written (with RAY_AUTH_MODE unset, Ray's behaviour depends on it).
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}

# Lists the cluster's nodes once both are alive. Run as a driver process of its own, so this pytest
# process never connects to the cluster (Ray keeps per-process state, e.g. the auth mode).
LIST_NODES = """
import json, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.monotonic() + 90
while len(nodes := [n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
    time.sleep(0.5)
print(json.dumps({("head" if "node:__internal_head__" in n["Resources"] else "worker"): n["NodeID"] for n in nodes}))
"""


def _node_env(**settings: str) -> dict[str, str]:
    """This environment with the venv's `ray` first on PATH, the cluster's token and no RAY_ADDRESS."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **AUTH, **settings}


def _health(*envs: dict[str, str]) -> list[tuple[int, str]]:
    """The containers' HEALTHCHECK command, `ray-node.sh health`, in the nodes' environments, at once:
    [(exit status, output)]."""
    checks = [
        subprocess.Popen(["sh", str(NODE_SCRIPT), "health"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for env in envs
    ]
    return [(check.wait(timeout=90), check.stdout.read()) for check in checks]


class RayCluster:
    """A head and a worker node with one CPU each, started as the compose file starts them."""

    def __init__(self, logs: Path) -> None:
        # Ray puts unix sockets under its temp dir, whose paths must stay short; a temp dir of our
        # own also keeps this cluster out of /tmp/ray, where other local Ray sessions look for one.
        self.temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.logs = logs
        self.processes: list[subprocess.Popen] = []
        self.head_env = _node_env(
            RAY_PORT=str(self.port),
            RAY_NUM_CPUS="1",
            RAY_DASHBOARD_HOST="127.0.0.1",
            RAY_DASHBOARD_PORT=str(_free_port()),
            RAY_START_ARGS=(
                f"--temp-dir={self.temp_dir} --ray-client-server-port={_free_port()} "
                f"--dashboard-agent-listen-port={_free_port()} --disable-usage-stats"
            ),
        )
        self.worker_env = _node_env(
            RAY_HEAD_ADDRESS=self.address,
            RAY_NUM_CPUS="1",
            RAY_START_ARGS=f"--dashboard-agent-listen-port={_free_port()} --disable-usage-stats",
        )

    def _start(self, role: str, env: dict[str, str]) -> None:
        with (self.logs / f"{role}-{self.port}.log").open("w") as log:
            self.processes.append(
                subprocess.Popen(
                    ["sh", str(NODE_SCRIPT), role], env=env, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )
            )

    def start(self) -> dict[str, str]:
        """Start both nodes and wait until they are in the cluster; returns {"head"|"worker": node id}."""
        self._start("head", self.head_env)
        self._start("worker", self.worker_env)  # it waits for the head's GCS to come up
        listed = subprocess.run(
            [sys.executable, "-c", LIST_NODES, self.address], env=_node_env(), capture_output=True, text=True,
            timeout=150,
        )
        assert listed.returncode == 0, listed.stdout + listed.stderr + self._log_tail()
        nodes = json.loads(listed.stdout.strip().splitlines()[-1])
        assert set(nodes) == {"head", "worker"}, f"the worker did not join: {nodes}{self._log_tail()}"
        return nodes

    def _log_tail(self) -> str:
        return "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(self.logs.glob(f"*-{self.port}.log")))

    def kill(self) -> None:
        """Lose every node at once: SIGKILL to each node's process group."""
        for process in self.processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
        self.processes.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@contextmanager
def ray_cluster(logs: Path):
    cluster = RayCluster(logs)
    try:
        yield cluster
    finally:
        cluster.kill()


def _node(episode) -> str:
    return episode.worker.split(" node ")[1]  # proxy_trial's worker: "host:pid (N CPU) node <node id[:12]>"


def test_search_on_two_nodes_with_postgres_survives_losing_the_head(tmp_path, data_root, postgres_url):  # noqa: F811
    config_path = tmp_path / "search.yaml"
    resources = {"concurrency": 2, "cpus_per_trial": 1}
    config = search_config(data_root, episodes=EPISODES, resources=resources, train={"iterations": ITERATIONS})
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    store = EpisodeStore(postgres_url)
    env = _node_env(NAS_LEASE_SECONDS=LEASE_SECONDS)

    with ray_cluster(tmp_path) as first:
        first_nodes = first.start()
        # The containers' HEALTHCHECK, with the head's settings and with the worker's.
        checks = _health(first.head_env, first.worker_env)
        assert [status for status, _ in checks] == [0, 0], checks
        with (tmp_path / "runner.log").open("w") as log:
            runner = _nas(
                "search", "start", "-c", str(config_path), "--name", "cluster", "--db", postgres_url,
                "--ray-address", first.address,
                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 240
        while not (searches := store.list_searches()) or searches[0].num_completed + searches[0].num_cached < 1:
            assert runner.poll() is None, (tmp_path / "runner.log").read_text()
            assert time.monotonic() < deadline, "no episode finished in time\n" + (tmp_path / "runner.log").read_text()
            time.sleep(0.5)
        # Losing the head node: the runner and all Ray state die; only PostgreSQL survives.
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()
    search_id = searches[0].id
    assert store.get_search(search_id).status == "running"  # killed: nobody marked it
    before = {e.number: e for e in store.list_episodes(search_id) if e.status in ("completed", "cached")}
    assert len(before) < EPISODES  # the loss fell mid-search
    wait_for_the_lease_to_expire(store, search_id)  # the dead runner is taken for dead: no flag needed

    with ray_cluster(tmp_path) as second:
        second_nodes = second.start()
        resumed = _nas(
            "search", "resume", str(search_id), "--db", postgres_url, "--ray-address", second.address,
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        output, _ = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, output

    search = store.get_search(search_id)
    episodes = store.list_episodes(search_id)
    assert search.status == "completed", search.error
    assert [e.number for e in episodes] == list(range(EPISODES))
    assert all(e.status in ("completed", "cached") for e in episodes)
    assert len({e.proposal_id for e in episodes}) == EPISODES and all(e.attempts == 1 for e in episodes)
    assert search.num_completed + search.num_cached == EPISODES
    for number, episode in before.items():  # nothing finished before the loss was redone or lost
        again = store.get_episode(search_id, number)
        assert (again.reward, again.finished_at, again.worker) == (episode.reward, episode.finished_at, episode.worker)
    controller = Controller.from_bytes(store.latest_checkpoint(search_id).state)
    assert controller.num_proposed == EPISODES and not controller.pending

    # What the system promises: trials ran on the cluster the runner was given, those before the loss on
    # the first, those after the resume on the second. (Which node of a cluster took a trial is Ray's
    # choice: with actor reuse, one node's actor may take them all.)
    first_ids = {node[:12] for node in first_nodes.values()}
    second_ids = {node[:12] for node in second_nodes.values()}
    trained = [e for e in episodes if e.status == "completed"]
    where = f"first {first_nodes}, second {second_nodes}, episodes " + "; ".join(
        f"{e.number} {e.status} {e.worker} {e.started_at:%X}-{e.finished_at:%X}" for e in episodes
    )
    assert {_node(e) for e in trained if e.number in before} <= first_ids, where
    assert {_node(e) for e in trained if e.number not in before} <= second_ids, where

    # And it is all in PostgreSQL, read with plain SQL rather than through the store.
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT number, status FROM episodes WHERE search_id = :id ORDER BY number"), {"id": search_id}
            ).all()
    finally:
        engine.dispose()
    assert [(number, status) for number, status in rows] == [(e.number, e.status) for e in episodes]
    assert engine.dialect.name == "postgresql"
    store.close()
