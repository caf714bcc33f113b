"""CLI start-up: wall time of commands that train nothing, this checkout against an older commit, in one run.

    python -m bench.cli_startup [--before a096e0d~1] [--runs 5]

The older commit is checked out into a temporary git worktree and run with this virtualenv's Python
from that folder (its own code comes first on ``sys.path``). Runs alternate between the two versions,
so a change of machine load hits both alike. ``search list``, ``search show`` and ``export best`` read a
store with one finished search, made by this checkout (the older code may not read its schema), so they
are timed for this checkout only. Run it on an idle machine: start-up is mostly imports and disk.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nas_service.store import EpisodeStore
from tests.seeding import seed_search

REPO = Path(__file__).resolve().parent.parent
BOTH = (["--help"], ["arch", "list"], ["arch", "show", "nasfpn"])


def timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nas_service.cli", *command], cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="a096e0d~1", help="The commit to compare with.")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        old = Path(folder) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), args.before], cwd=REPO, check=True,
                       capture_output=True)
        try:
            url = f"sqlite:///{Path(folder) / 'nas.db'}"
            search_id = seed_search(EpisodeStore(url), "startup", 20, Path(folder) / "data")
            commands = {" ".join(command): (command, True) for command in BOTH} | {
                "search list": (["search", "list", "--db", url], False),
                "search show": (["search", "show", str(search_id), "--db", url], False),
                "export best": (["export", "best", "--search", str(search_id), "--db", url], False),
            }
            rows = []
            for name, (command, compared) in commands.items():
                here, before = [], []
                for _ in range(args.runs):
                    if compared:
                        before.append(timed(command, old))
                    here.append(timed(command, REPO))
                rows.append((name, here, before))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO, check=True)
    print(f"{'command':24} {'this checkout s (median, max)':>30} {args.before + ' s (median, max)':>30}  runs {args.runs}")
    for name, here, before in rows:
        then = f"{statistics.median(before):.2f}, {max(before):.2f}" if before else "-"
        print(f"{name:24} {f'{statistics.median(here):.2f}, {max(here):.2f}':>30} {then:>30}")


if __name__ == "__main__":
    main()
