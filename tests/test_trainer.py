import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from detector.engine import DetectorTrainingConfig
from detector.engine.checkpoints import FINAL, LATEST, init_from_checkpoint, load_checkpoint, periodic_name
from detector.engine.model import detector_config
from detector.engine.schedule import lr_factor
from detector.engine.trainer import train
from detector.modeling import build_detector
from nas_service.yaml_config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "detector"
BIN = Path(sys.executable).parent


def tiny_config(data_root: Path, **train) -> dict:
    data = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    data["dataset"]["synthetic"]["root"] = str(data_root)
    data["train"].update(train)
    return data


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("detector") / "synthetic"


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory):
    """8 iterations, checkpoints every 2, in this process."""
    config = DetectorTrainingConfig.model_validate(tiny_config(data_root, iterations=8))
    work_dir = tmp_path_factory.mktemp("uninterrupted")
    lines: list[str] = []
    result = train(config, work_dir, log=lines.append)
    return config, work_dir, result, lines


def test_training_logs_checkpoints_and_tensorboard(uninterrupted):
    config, work_dir, result, lines = uninterrupted
    assert result.iterations == 8 and result.start_iteration == 0 and len(result.loss_curve) == 8  # the fixture's 8
    assert all(torch.isfinite(torch.tensor(result.loss_curve)))
    assert result.checkpoint == work_dir / FINAL and (work_dir / LATEST).read_text().strip() == FINAL
    # keep_checkpoints (3) periodic ones stay next to the final one.
    assert sorted(p.name for p in work_dir.glob("model_*.pth")) == [
        "model_0000002.pth", "model_0000004.pth", "model_0000006.pth", FINAL
    ]
    progress = [line for line in lines if line.startswith("iteration ")]
    assert len(progress) == 8 and progress[-1].startswith("iteration 8/8  loss ")
    # tiny.yaml: lr 0.02, a step schedule (gamma 0.1 by default) at iteration 4 -> 0.002 at the end.
    assert "img/s  ETA 00:00:00" in progress[-1] and " lr 0.002" in progress[-1]
    assert list((work_dir / "tensorboard").glob("events.out.tfevents.*"))
    state = load_checkpoint(result.checkpoint)
    assert state["iteration"] == 8 and state["loss_curve"] == result.loss_curve
    assert state["class_names"] == ["red_ellipse", "green_rectangle", "blue_triangle"]


def test_killed_run_resumes_to_the_uninterrupted_result(uninterrupted, data_root, tmp_path):
    """SIGKILL while checkpoint 4 is being written, then resume: the result of a run never stopped.

    The staging file of checkpoint 4 (``save_checkpoint`` writes ``.NAME.tmp``, then renames it) is a
    named pipe here, so the run halts by itself after checkpoint 2 is complete: writing 4 blocks once
    the pipe is full. The test kills it when the first bytes arrive, whatever the machine's speed, and
    leaves those bytes behind as the half-written file a kill leaves on disk.
    """
    config, _, expected, _ = uninterrupted
    work_dir = tmp_path / "killed"
    work_dir.mkdir()
    staging = work_dir / f".{periodic_name(4)}.tmp"
    os.mkfifo(staging)
    pipe = os.open(staging, os.O_RDONLY | os.O_NONBLOCK)  # a reader exists, so the run's open() returns
    path = write_config(tmp_path / "tiny.yaml", tiny_config(data_root, iterations=8))
    process = subprocess.Popen(
        [sys.executable, "-m", "nas_service.cli", "train", "-c", str(path), "--work-dir", str(work_dir)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300  # generous: the run needs a few seconds on an idle machine
        while not select.select([pipe], [], [], 1.0)[0]:
            assert process.poll() is None, f"the run ended before checkpoint 4:\n{process.stderr.read().decode()}"
            assert time.monotonic() < deadline, "the run did not reach checkpoint 4 within 300 s"
        assert (work_dir / LATEST).read_text() == periodic_name(2) + "\n"  # checkpoint 2 is complete
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()  # no-op once killed; never leaves a run behind when an assertion fails
        process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    partial = os.read(pipe, 1 << 16)
    os.close(pipe)
    staging.unlink()
    staging.write_bytes(partial)
    assert partial.startswith(b"PK") and not (work_dir / periodic_name(4)).exists()  # torch.save's zip, cut
    resumed = train(config, work_dir, resume=True, log=lambda _: None)
    assert resumed.start_iteration == 2 and resumed.iterations == 8
    assert resumed.loss_curve == expected.loss_curve
    got, want = load_checkpoint(resumed.checkpoint), load_checkpoint(expected.checkpoint)
    for key, value in want["model"].items():
        assert torch.equal(got["model"][key], value), key
    assert got["optimizer"]["state"].keys() == want["optimizer"]["state"].keys()
    for index, slot in want["optimizer"]["state"].items():
        assert torch.equal(got["optimizer"]["state"][index]["momentum_buffer"], slot["momentum_buffer"])


def test_resume_refuses_a_changed_sample_stream(uninterrupted, data_root):
    _, work_dir, _, _ = uninterrupted
    changed = DetectorTrainingConfig.model_validate(tiny_config(data_root, iterations=8, batch_size=3))
    with pytest.raises(ValueError, match=r"train.batch_size was 2, the config now says 3; a resume keeps it"):
        train(changed, work_dir, resume=True, log=lambda _: None)


def test_init_from_a_checkpoint_with_other_classes(uninterrupted, data_root):
    config, _, result, _ = uninterrupted
    source = load_checkpoint(result.checkpoint)["model"]
    names = ["Blue_Triangle", "unicorn", "red_ellipse", "teal ring"]
    model = build_detector(detector_config(config, num_classes=len(names)))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from_checkpoint(model, result.checkpoint, names, class_map={"teal ring": "green_rectangle"})
    state = model.state_dict()
    assert report.matched_classes == {
        "Blue_Triangle": "blue_triangle", "red_ellipse": "red_ellipse", "teal ring": "green_rectangle"
    }
    assert report.unmatched_classes == ["unicorn"]
    for stage in range(3):
        key = f"roi_heads.stages.{stage}.predictor.cls_score.weight"
        assert key in report.remapped
        for new_row, old_row in ((0, 0), (1, 3), (3, 1), (4, 2)):
            assert torch.equal(state[key][new_row], source[key][old_row])
        assert torch.equal(state[key][2], fresh[key][2])  # unicorn keeps its fresh row
        assert torch.equal(state[f"roi_heads.stages.{stage}.predictor.bbox_pred.weight"],
                           source[f"roi_heads.stages.{stage}.predictor.bbox_pred.weight"])
    assert torch.equal(state["backbone.body.conv1.weight"], source["backbone.body.conv1.weight"])
    assert report.missing == report.unexpected == report.shape_mismatch == []
    assert "classes matched by name: 3 of 4; new (fresh rows): unicorn" in "\n".join(report.lines())

    model = build_detector(detector_config(config, num_classes=len(names)))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from_checkpoint(model, result.checkpoint, names, classes="reinit")
    assert len(report.reinitialised) == 6 and not report.remapped  # 3 stages x cls_score weight and bias
    key = "roi_heads.stages.0.predictor.cls_score.weight"
    assert torch.equal(model.state_dict()[key], fresh[key])
    with pytest.raises(ValueError, match=r"init_class_map.unicorn: 'pegasus' is not a class of the checkpoint"):
        init_from_checkpoint(model, result.checkpoint, names, class_map={"unicorn": "pegasus"})


def test_training_starts_from_a_checkpoint_of_another_dataset(uninterrupted, tmp_path_factory):
    _, _, result, _ = uninterrupted
    root = tmp_path_factory.mktemp("four") / "synthetic"
    data = tiny_config(root, iterations=3, init_from=str(result.checkpoint), checkpoint_every=10)
    data["dataset"]["synthetic"].update(num_classes=4, num_train=8)
    lines: list[str] = []
    trained = train(DetectorTrainingConfig.model_validate(data), tmp_path_factory.mktemp("init"), log=lines.append)
    assert trained.iterations == 3 and trained.init_report is not None
    assert trained.init_report.unmatched_classes == ["yellow_star"]
    assert any("classes matched by name: 3 of 4; new (fresh rows): yellow_star" in line for line in lines)


def test_two_processes_train_with_gloo_and_resume(data_root, tmp_path):
    """torchrun, 2 CPU processes, gloo: rank 0 alone writes, with both processes' RNG states."""
    path = write_config(tmp_path / "ddp.yaml", tiny_config(data_root, iterations=4))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun(work_dir: Path, *extra: str) -> str:
        completed = subprocess.run(
            [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "nas_service.cli", "train",
             "-c", str(path), "--work-dir", str(work_dir), *extra],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        return completed.stdout

    output = torchrun(tmp_path / "full")
    # 4 iterations, a checkpoint every 2: model_0000002 and the final one, each written by rank 0 only.
    assert "on 2 process(es)" in output and output.count("checkpoint: ") == 2
    full = load_checkpoint(tmp_path / "full" / FINAL)
    assert full["world_size"] == 2 and len(full["rng"]) == 2 and full["iteration"] == 4
    half = tmp_path / "half"
    half.mkdir()
    (half / "model_0000002.pth").write_bytes((tmp_path / "full" / "model_0000002.pth").read_bytes())
    (half / LATEST).write_text("model_0000002.pth\n")
    assert "resume: continuing from" in torchrun(half, "--resume")
    resumed = load_checkpoint(half / FINAL)
    # The resumed processes restart at iteration 2 with the saved history; their later losses are
    # close to the uninterrupted run's but, unlike on one process, not yet bit-identical.
    assert resumed["iteration"] == 4 and resumed["world_size"] == 2
    assert resumed["loss_curve"][:2] == full["loss_curve"][:2]
    # 1% is a tolerance, not a measured figure.
    assert resumed["loss_curve"][2] == pytest.approx(full["loss_curve"][2], rel=0.01)


def test_learning_rate_schedules():
    # Linear warm-up from 0.01 over 10 iterations, then x0.1 at 50 and again at 80 (Detectron's step
    # schedule); cosine: 1 after warm-up, 0.5 half-way through the remaining 90, 0 at the end.
    step = [lr_factor(i, 100, 10, 0.01, "step", (50, 80), 0.1) for i in range(100)]
    assert step[0] == pytest.approx(0.01) and step[10] == 1.0 and step[49] == 1.0
    assert step[50] == pytest.approx(0.1) and step[79] == pytest.approx(0.1) and step[80] == pytest.approx(0.01)
    cosine = [lr_factor(i, 100, 10, 0.01, "cosine") for i in range(101)]
    assert cosine[10] == 1.0 and cosine[55] == pytest.approx(0.5) and cosine[100] == pytest.approx(0.0)


def test_shipped_configs_validate_and_default_to_the_full_model(tmp_path):
    shipped = {path.name: load_config(path, DetectorTrainingConfig) for path in sorted(CONFIGS.glob("*.yaml"))}
    assert sorted(shipped) == ["objects365_r50.yaml", "tiny.yaml"]
    # objects365_r50.yaml is the recipe its header names (Baidu's Objects365 2019 solution), in the values
    # the schema leaves open: v2 image folders, class diversity sampling, adaptive testing, gaussian
    # Soft-NMS with sigma 0.15 (their config), flip TTA up to 1400 px.
    recipe = shipped["objects365_r50.yaml"]
    assert recipe.dataset.objects365_v2_paths and recipe.dataset.sampler.kind == "class_diversity"
    assert (recipe.detector.cascade.test_mode, recipe.detector.postprocess.nms, recipe.detector.postprocess.sigma) == (
        "adaptive", "gaussian", 0.15
    )
    assert recipe.test.tta.flip and recipe.test.tta.short_sides[-1] == 1400
    full = DetectorTrainingConfig(dataset={"synthetic": {"root": str(tmp_path)}})
    # The full model: ResNet-50, NAS-FPN's 7 repeats of 256 channels (Ghiasi et al. 2019), the 2019 solution's
    # 14 x 14 box head and gaussian Soft-NMS, its training scales 400..1400 (max 1600) and its test
    # scales 400..1400 (max 2100).
    assert (full.detector.backbone.depth, full.detector.neck.width, full.detector.neck.repeats) == (50, 256, 7)
    assert full.detector.cascade.box_head_resolution == 14 and full.detector.postprocess.nms == "gaussian"
    assert (full.train.short_sides, full.train.max_size) == ((400, 1400), 1600)
    assert (full.test.tta.short_sides[0], full.test.tta.short_sides[-1], full.test.tta.max_size) == (400, 1400, 2100)
    partial = DetectorTrainingConfig.model_validate(
        {"dataset": {"synthetic": {"root": str(tmp_path)}}, "detector": {"cascade": {"fc_dim": 512}}}
    )
    assert partial.detector.cascade.box_head_resolution == 14  # defaults hold per field


def test_bad_config_fields_are_named(tmp_path, data_root):
    data = tiny_config(data_root, short_sides=[900, 400])
    data["dataset"]["sampler"]["kind"] = "balanced"
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path / "bad.yaml", data), DetectorTrainingConfig)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'bad.yaml'}: ")
    assert "dataset.sampler.kind: Input should be 'uniform', 'class_diversity'" in message
    assert "train: short_sides: expected 0 < low <= high, got [900, 400]" in message
