import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

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
