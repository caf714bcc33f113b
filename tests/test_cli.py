import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml
from typer.testing import CliRunner

from nas_service.cli import app
from search_spaces import nasfpn
from search_spaces.render import render_svg

runner = CliRunner()
SVG = "{http://www.w3.org/2000/svg}"


def test_arch_show_writes_the_svg_and_prints_the_cell(tmp_path):
    out = tmp_path / "graphs" / "nasfpn.svg"
    result = runner.invoke(app, ["arch", "show", "nasfpn", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert nasfpn().canonical_hash() in result.output
    assert "gp(1,3)@4 sum(1,5)@4 | sum(0,6)@3" in result.output
    assert "96.82 GFLOPs, 28.93 M parameters" in result.output  # 640x640, width 256, 7 repeats
    root = ET.parse(out).getroot()
    assert root.tag == f"{SVG}svg"


def test_arch_show_reports_bad_files(tmp_path):
    bad = tmp_path / "cell.json"
    data = nasfpn().to_dict()
    data["cells"][2]["input_a"] = 12
    bad.write_text(json.dumps(data))
    result = runner.invoke(app, ["arch", "show", str(bad)])
    assert result.exit_code == 2
    assert "cells[2].input_a: pool index 12 is out of range" in result.output


def test_arch_list_names_the_known_cells():
    result = runner.invoke(app, ["arch", "list"])
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.splitlines()] == ["fpn", "nasfpn"]


def test_svg_draws_every_node_and_connection():
    arch = nasfpn()
    root = ET.fromstring(render_svg(arch, title="nasfpn"))
    nodes = root.findall(f".//{SVG}g")
    assert len([g for g in nodes if "input" in g.get("class")]) == 5
    assert len([g for g in nodes if "intermediate" in g.get("class")]) == 2
    assert len([g for g in nodes if "output" in g.get("class")]) == 5
    edges = root.findall(f".//{SVG}path[@class='edge']")
    dashed = [e for e in edges if e.get("stroke-dasharray")]
    assert len(edges) == 2 * 7 + 2 and len(dashed) == 2  # P5 and P7 are added as unused entries
    labels = {t.text for t in root.iter(f"{SVG}text")}
    assert {"P3'", "P4'", "P5'", "P6'", "P7'", "GP", "+"} <= labels


def test_controller_sample_starts_with_the_seed():
    result = runner.invoke(app, ["controller", "sample", "--num", "5", "--seed", "3"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("seeded with nasfpn: p(seed) = ")
    assert nasfpn().canonical_hash()[:12] in lines[1]
    assert len(lines) == 6


def test_controller_sample_reads_a_config(tmp_path):
    result = runner.invoke(app, ["controller", "sample", "-n", "2", "-c", "configs/controller/reinforce_p2_p6.yaml"])
    assert result.exit_code == 0, result.output
    assert nasfpn((2, 3, 4, 5, 6)).canonical_hash()[:12] in result.output.splitlines()[1]


def test_controller_sample_names_the_bad_field(tmp_path):
    config = tmp_path / "controller.yaml"
    config.write_text("algorithm: ppo\nseed_architecture: fpn\n")
    result = runner.invoke(app, ["controller", "sample", "-c", str(config)])
    assert result.exit_code == 2
    assert f"{config}: seed_architecture: " in result.output
    config.write_text("algorithm: [ppo\n")
    result = runner.invoke(app, ["controller", "sample", "-c", str(config)])
    assert result.exit_code == 2
    assert "invalid YAML at line 2" in result.output


def test_the_installed_console_script_runs(tmp_path):
    nas = Path(sys.executable).parent / "nas"
    out = tmp_path / "fpn.svg"
    completed = subprocess.run(
        [str(nas), "arch", "show", "fpn", "--output", str(out)], capture_output=True, text=True, check=True
    )
    assert "sum(4,3)@6" in completed.stdout and out.exists()


def test_dataset_synth_writes_a_loadable_dataset(tmp_path):
    out = tmp_path / "synth"
    args = ["dataset", "synth", "--out", str(out), "--train", "6", "--val", "3", "--size", "64", "--classes", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    train = json.loads((out / "annotations" / "train.json").read_text())
    assert len(train["images"]) == 6 and len(train["categories"]) == 3
    assert len(list((out / "val").glob("*.png"))) == 3
    again = runner.invoke(app, args[:-1] + ["4"])
    assert again.exit_code == 2 and "other settings (num_classes" in again.output


def test_proxy_command_runs_one_episode(tmp_path):
    from tests.test_proxy import tiny_proxy_config

    from search_spaces import fpn
    from search_spaces.cost import neck_cost

    config = tiny_proxy_config(tmp_path / "data", iterations=2)
    neck = config.detector.neck.model_copy(update={"architecture": "fpn"})
    config = config.model_copy(update={"detector": config.detector.model_copy(update={"neck": neck})})
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    out = tmp_path / "result.json"
    result = runner.invoke(app, ["proxy", "-c", str(path), "--json", str(out)])  # the cell: the config's fpn
    assert result.exit_code == 0, result.output
    assert "status:     completed" in result.output
    saved = json.loads(out.read_text())
    assert saved["iterations"] == 2 and set(saved["metrics"]) >= {"AP", "AP50"}
    size = (config.test.short_side,) * 2
    expected = neck_cost(fpn(neck.levels), size, width=neck.width, repeats=neck.repeats, norm=neck.norm)
    assert saved["neck_params"] == expected.params


def test_proxy_command_reports_a_failed_episode(tmp_path):
    from tests.test_proxy import DIVERGING, tiny_proxy_config

    config = tiny_proxy_config(tmp_path / "data", iterations=3, **DIVERGING)
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    result = runner.invoke(app, ["proxy", "-c", str(path)])
    assert result.exit_code == 1
    assert "status:     failed (non-finite loss nan at iteration 1" in result.output


def test_proxy_command_names_bad_config_fields(tmp_path):
    path = tmp_path / "proxy.yaml"
    path.write_text("dataset: {synthetic: {root: x}}\ndetector: {neck: {repeats: 0}}\n")
    result = runner.invoke(app, ["proxy", "-c", str(path)])
    assert result.exit_code == 2
    assert "detector.neck.repeats: Input should be greater than or equal to 1" in result.output


def _run_nas(*args: str) -> subprocess.CompletedProcess:
    """The installed ``nas`` in a process of its own, as a user runs it (CliRunner hides tracebacks)."""
    return subprocess.run(
        [sys.executable, "-m", "nas_service.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_user_errors_are_one_line_with_exit_2_and_debug_shows_the_traceback(tmp_path):
    binary = tmp_path / "config.yaml"
    binary.write_bytes(b"\x00\xff\xfe binary")
    blocked = tmp_path / "file"
    blocked.write_text("a file where a folder must be made")
    cases = {
        ("proxy", "-c", str(binary)): f"error: {binary}: not a text file (byte 1 is not UTF-8)",
        ("dataset", "synth", "--out", str(blocked / "synthetic")): "cannot create the synthetic dataset here",
        ("search", "list", "--db", f"sqlite:///{tmp_path}/typo/nas.db"): "no episode store at",
        ("dataset", "synth", "--out", str(tmp_path / "s"), "--size", "8"): "--size: Input should be greater than or equal to 32",
    }
    for args, message in cases.items():
        result = _run_nas(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr + result.stdout, args
    assert not (tmp_path / "typo").exists()  # a mistyped --db made no new, empty store
    debug = _run_nas("--debug", "proxy", "-c", str(binary))
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr


def test_commands_that_train_nothing_import_neither_torch_nor_ray(tmp_path):
    """`nas --help`, `nas arch`, `nas search list|show` and `nas export` must start fast: no torch, no Ray."""
    from nas_service.store import EpisodeStore
    from tests.seeding import seed_search

    url = f"sqlite:///{tmp_path}/nas.db"
    store = EpisodeStore(url)
    search_id = seed_search(store, "quick", episodes=3, data_root=tmp_path / "data")
    store.close()
    commands = [
        ["--help"],
        ["arch", "list"],
        ["arch", "show", "nasfpn", "-o", str(tmp_path / "cell.svg")],
        ["search", "list", "--db", url],
        ["search", "show", str(search_id), "--db", url],
        ["export", "best", "--search", str(search_id), "--db", url],
    ]
    for args in commands:
        result = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "nas_service.cli", *args],
            capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, (args, result.stderr[-2000:])
        imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
        assert not imported & {"torch", "ray", "torchvision"}, args
