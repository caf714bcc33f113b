"""What would fail every episode fails the search before its first one, named: a broken annotation file,
unusable images, a reward split without boxes, a trial no node can hold. Empty or undecodable images are
skipped like missing ones; a trial stuck waiting for resources does not keep a stop from ending."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml
from ray.cluster_utils import Cluster
from ray.util.placement_group import placement_group, remove_placement_group

from detector.data.coco import CocoDetection, DatasetError
from detector.data.synthetic import generate_synthetic_dataset
from detector.engine.config import DatasetConfig
from nas_errors import LaunchError
from nas_service.preflight import check_dataset, check_resources
from nas_service.search_config import ResourcesConfig
from nas_service.store import EpisodeStore
from tests.seeding import search_config
from tests.test_search import RUNNER_ENV, _nas, wait_for


@pytest.fixture
def coco(tmp_path) -> DatasetConfig:
    """A small COCO-format dataset (train and val) on disk that a test may break."""
    data = generate_synthetic_dataset(tmp_path / "coco", num_train=6, num_val=4, image_size=64, num_classes=3, seed=0)
    return DatasetConfig(
        train_annotations=data.train_ann, train_images=data.train_images,
        val_annotations=data.val_ann, val_images=data.val_images,
    )


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _image(config: DatasetConfig, index: int) -> Path:
    name = json.loads(config.train_annotations.read_text())["images"][index]["file_name"]
    return config.train_images / name


def test_empty_and_non_image_files_are_counted_and_skipped_like_missing_ones(coco):
    _image(coco, 0).write_bytes(b"")  # an interrupted copy
    _image(coco, 1).write_text("<html>404 Not Found</html>")  # an error page saved as the image
    _image(coco, 2).unlink()
    with pytest.warns(UserWarning, match=r"1 of 6 listed images are missing .*; 2 of 6 listed images are empty or "
                                         r"not readable as images, e.g. \[.*\]; they are skipped"):
        dataset = CocoDetection(coco.train_annotations, coco.train_images)
    report = dataset.report
    assert (len(dataset), report.num_missing_images, report.num_unreadable_images) == (3, 1, 2)
    assert report.unreadable_examples == [_image(coco, 0).name, _image(coco, 1).name]
    assert all(dataset[i][0].shape[0] == 3 for i in range(len(dataset)))  # what is served decodes
    check_dataset(coco)  # the search can run on what is left


@pytest.mark.parametrize(
    ("breakage", "named"),
    [
        (lambda c: _edit(c.train_annotations, lambda d: d["annotations"][2].update(bbox=[1, 2, "x", 4])),
         r"train.json: annotations\[2\].bbox: expected 4 numbers \[x, y, w, h\], got \[1, 2, 'x', 4\]"),
        (lambda c: c.val_annotations.write_text('{"images": [}'), r"val.json: invalid JSON at line 1, column 13"),
        (lambda c: shutil.rmtree(c.train_images),
         r"train.json: no image of the training split can be read from .*/train: 6 missing"),
        (lambda c: _edit(c.val_annotations, lambda d: d.update(annotations=[])),
         r"val.json: the reward split has no boxes in the 4 images it scores, so AP is undefined"),
        (lambda c: _image(c, 3).write_bytes(_image(c, 3).read_bytes()[:200]),  # the header survives
         r"/train/\S+\.png: cannot decode image id \d+ of .*train.json"),
    ],
    ids=["bad-record", "bad-json", "no-images", "no-reward-boxes", "truncated-image"],
)
def test_a_dataset_that_cannot_serve_is_refused_by_file_and_record(coco, breakage, named):
    breakage(coco)
    with pytest.raises(DatasetError, match=named):
        check_dataset(coco)


def test_a_trial_must_fit_one_node():
    node = {"Alive": True, "Resources": {"CPU": 2.0, "memory": 1e9}}
    gpu_node = {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}}
    check_resources(ResourcesConfig(cpus_per_trial=2), [node])
    check_resources(ResourcesConfig(cpus_per_trial=4, gpus_per_trial=1), [node, gpu_node])
    with pytest.raises(LaunchError, match=r"a trial needs 4 CPUs and 0 GPUs on one node .*\(its nodes: 2 CPUs and "
                                          r"0 GPUs, 2 CPUs and 0 GPUs\)"):
        check_resources(ResourcesConfig(cpus_per_trial=4), [node, node])  # 4 CPUs in all, but not on one node
    with pytest.raises(LaunchError, match=r"needs 1 CPUs and 2 GPUs"):
        check_resources(ResourcesConfig(gpus_per_trial=2), [gpu_node, {**gpu_node, "Alive": False}])


def _start(tmp_path: Path, config, *options: str) -> tuple[subprocess.CompletedProcess, EpisodeStore]:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    run = subprocess.run(
        [sys.executable, "-m", "nas_service.cli", "search", "start", "-c", str(path), "--name", "doomed", "--db", db,
         *options],
        cwd=tmp_path, env=RUNNER_ENV, capture_output=True, text=True, timeout=300,
    )
    return run, EpisodeStore(db)


def test_a_search_on_a_broken_dataset_fails_before_its_first_episode(tmp_path, coco):
    _edit(coco.train_annotations, lambda d: d["annotations"][2].update(category_id=99))
    config = search_config(tmp_path / "unused", episodes=3)
    config = config.model_copy(update={"proxy": config.proxy.model_copy(update={"dataset": coco})})
    run, store = _start(tmp_path, config)
    message = f"{coco.train_annotations}: annotations[2].category_id: no category with id 99"
    assert run.returncode == 2 and f"error: {message}" in run.stderr and "Traceback" not in run.stderr
    search = store.get_search_by_name("doomed")
    assert (search.status, search.error, search.num_episodes) == ("failed", message, 0)
    assert search.lease_owner is None


def test_an_unschedulable_trial_is_refused_at_start_with_the_reason(tmp_path):
    config = search_config(tmp_path / "synthetic", episodes=3, resources={"cpus_per_trial": 64})
    run, store = _start(tmp_path, config)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "error: resources: a trial needs 64 CPUs and 0 GPUs on one node" in run.stderr
    search = store.get_search_by_name("doomed")
    assert search.status == "failed" and search.error.startswith("resources: a trial needs 64 CPUs")
    assert search.num_episodes == 0


def test_stop_ends_a_search_whose_trial_waits_for_resources_that_never_come(tmp_path):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        # Something else holds the cluster's one CPU: the search's trial fits the node, but waits.
        held = placement_group([{"CPU": 1}])
        ray.get(held.ready(), timeout=60)
        config = search_config(tmp_path / "synthetic", episodes=3)
        path = tmp_path / "search.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        db = f"sqlite:///{tmp_path / 'nas.db'}"
        log = tmp_path / "runner.log"
        with log.open("w") as out:
            runner = _nas("search", "start", "-c", str(path), "--db", db, "--ray-address", cluster.address,
                          cwd=tmp_path, env=RUNNER_ENV, stdout=out, stderr=subprocess.STDOUT)
        store = EpisodeStore(db)
        search_id = wait_for(lambda: store.list_searches() and store.list_searches()[0].id, "no search", log=log)
        wait_for(lambda: store.count_episodes(search_id, status="running"), "no trial was asked for", log=log)
        stop = subprocess.run([sys.executable, "-m", "nas_service.cli", "search", "stop", str(search_id), "--db", db],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0 and "is stopping" in stop.stdout, stop.stdout + stop.stderr
        assert runner.wait(timeout=180) == 0, log.read_text()
        remove_placement_group(held)
    finally:
        ray.shutdown()
        cluster.shutdown()
    search = store.get_search(search_id)
    episode = store.get_episode(search_id, 0)
    assert search.status == "stopped" and search.num_episodes == 1
    assert (episode.status, episode.attempts) == ("proposed", 0)  # never ran: put back, no attempt used
