"""``nas serve`` in a process of its own on loopback, for the API and browser tests and ``bench.api``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

TOKEN = "test-token"
HTTP_TIMEOUT = 60.0
"""How long a test waits for the API's answer: it promises one, not its speed on a loaded machine
(httpx's own default of 5 s failed under load for a create that submits a Ray job)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(
    db_url: str,
    cwd: Path,
    token: str | None = TOKEN,
    port: int | None = None,
    ray_address: str | None = None,
    options: Sequence[str] = (),
) -> Iterator[str]:
    """``nas serve [options]`` in a process of its own; yields its base URL once /api/health answers."""
    port = port or free_port()
    env = {**os.environ, "NAS_API_TOKEN": token or ""}
    log = (cwd / f"serve-{port}.log").open("ab")
    command = [sys.executable, "-m", "nas_service.cli", "serve", "--port", str(port), "--db", db_url, *options]
    server = subprocess.Popen(
        command + (["--ray-address", ray_address] if ray_address else []),
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"nas serve exited: {(cwd / f'serve-{port}.log').read_text()}")
            try:
                if httpx.get(f"{base}/api/health", timeout=HTTP_TIMEOUT).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise TimeoutError("nas serve did not answer within 60 s")
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
