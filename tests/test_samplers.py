import json
import math
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from detector.data.coco import annotation_labels
from detector.data.samplers import TrainingSampler, class_exposure, sampling_weights
from nas_service.cli import app

LN2 = math.log(2)


@pytest.fixture
def crafted(tmp_path):
    """4 images, classes cat (id 30), dog (id 10), eel (id 20); labels follow sorted ids: dog 1,
    eel 2, cat 3. A crowd eel and a zero-width cat must not count."""
    images = [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 80} for i in (1, 2, 3, 4)]
    boxes = [
        (1, 30, [0, 0, 10, 10], 0),
        (1, 30, [20, 20, 10, 10], 0),
        (1, 10, [5, 5, 30, 30], 0),
        (1, 30, [50, 50, 0, 10], 0),  # no width: dropped
        (2, 30, [1, 1, 5, 5], 0),
        (2, 20, [10, 10, 20, 20], 1),  # crowd: not trained on
        (3, 10, [0, 0, 40, 40], 0),
        (3, 20, [40, 40, 20, 20], 0),
    ]
    annotations = [
        {"id": n, "image_id": i, "category_id": c, "bbox": b, "iscrowd": crowd}
        for n, (i, c, b, crowd) in enumerate(boxes, 1)
    ]
    categories = [{"id": 30, "name": "cat"}, {"id": 10, "name": "dog"}, {"id": 20, "name": "eel"}]
    path = tmp_path / "crafted.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_annotation_labels_reads_boxes_as_training_keeps_them(crafted):
    names, labels = annotation_labels(crafted)
    assert names == ["dog", "eel", "cat"]
    assert [sorted(x.tolist()) for x in labels] == [[1, 3, 3], [3], [1, 2], []]


def test_weights_match_hand_computed_values(crafted):
    _, labels = annotation_labels(crafted)
    # Boxes: cat 3, dog 2, eel 1 of 6. Images with: cat 2, dog 2, eel 1 of 4.
    p_dog, p_eel, p_cat = 2 / 6, 1 / 6, 3 / 6
    expected = {
        "uniform": [1, 1, 1, 1],
        "class_diversity": [LN2 + 0.5 * (p_cat + p_dog), 0.5 * p_cat, LN2 + 0.5 * (p_dog + p_eel), 0.0],
        "class_aware": [1 / 2 + 1 / 2, 1 / 2, 1 / 2 + 1 / 1, 0.0],
        "repeat_factor": [1.0, 1.0, math.sqrt(0.5 / 0.25), 1.0],
    }
    for kind, values in expected.items():
        got = sampling_weights(kind, labels, 3, diversity_eps=0.5, repeat_threshold=0.5)
        np.testing.assert_allclose(got, values, rtol=1e-12, err_msg=kind)
    exposure = class_exposure(np.array(expected["class_aware"]), labels, 3)
    np.testing.assert_allclose(exposure[1:], [2.5 / 3, 1.5 / 3, 1.5 / 3])


def test_unknown_kind_and_no_positive_weight_are_named():
    with pytest.raises(ValueError, match="sampler.kind: expected one of .*got 'balanced'"):
        sampling_weights("balanced", [np.array([1])], 1)
    with pytest.raises(ValueError, match="class_aware gives no image a positive weight"):
        TrainingSampler("class_aware", np.zeros(3), seed=0)


def _take(sampler, count):
    stream = iter(sampler)
    return [next(stream) for _ in range(count)]


def test_weighted_stream_draws_in_proportion_to_the_weights():
    weights = np.array([1.0, 3.0, 0.0, 6.0])
    pairs = _take(TrainingSampler("class_diversity", weights, seed=1), 20_000)
    assert [position for position, _ in pairs] == list(range(20_000))
    counts = Counter(index for _, index in pairs)
    assert counts[2] == 0
    for index in (0, 1, 3):
        assert counts[index] / 20_000 == pytest.approx(weights[index] / weights.sum(), abs=0.015)


def test_uniform_epochs_are_permutations_and_repeat_factor_rounds_stochastically():
    uniform = [index for _, index in _take(TrainingSampler("uniform", np.ones(5), seed=3), 15)]
    assert all(sorted(uniform[k : k + 5]) == list(range(5)) for k in (0, 5, 10))
    assert uniform[:5] != uniform[5:10]
    sampler = TrainingSampler("repeat_factor", np.array([1.0, 2.5, 1.0]), seed=0)
    sizes = set()
    for epoch in range(20):
        counts = Counter(sampler.epoch(epoch).tolist())
        assert counts[0] == counts[2] == 1 and counts[1] in (2, 3)
        sizes.add(counts[1])
    assert sizes == {2, 3}


def test_processes_split_one_stream_and_resume_mid_epoch():
    weights = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    single = _take(TrainingSampler("class_aware", weights, seed=7), 24)
    rank0 = _take(TrainingSampler("class_aware", weights, seed=7, rank=0, world_size=2), 12)
    rank1 = _take(TrainingSampler("class_aware", weights, seed=7, rank=1, world_size=2), 12)
    assert rank0 == single[0::2] and rank1 == single[1::2]
    resumed = _take(TrainingSampler("class_aware", weights, seed=7, rank=1, world_size=2, start=7), 5)
    assert resumed == rank1[7:12]
    assert _take(TrainingSampler("class_aware", weights, seed=8), 24) != single


def test_dataset_stats_prints_counts_and_sampler_rates(crafted):
    result = CliRunner().invoke(
        app, ["dataset", "stats", str(crafted), "--diversity-eps", "0.5", "--repeat-threshold", "0.5"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].endswith("4 images, 3 classes, 6 boxes")
    cat = next(line for line in lines if line.startswith("cat "))
    # cat: 3 boxes, 2 images; class-aware exposure = (1 + 1/2) / 3.
    assert cat.split()[1:4] == ["3", "2", "0.5000"] and cat.split()[5] == f"{1.5 / 3:.4f}"
    image2 = next(line for line in lines if line.split()[:3] == ["2", "2", "2"])
    total = 2 * LN2 + 0.5 * (3 / 6 + 2 / 6) + 0.5 * 3 / 6 + 0.5 * (2 / 6 + 1 / 6)
    assert float(image2.split()[4]) == pytest.approx(4 * (LN2 + 0.25) / total, abs=1e-3)


def test_dataset_stats_names_a_bad_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "categories": [], "annotations": [{"id": 1}]}))
    result = CliRunner().invoke(app, ["dataset", "stats", str(bad)])
    assert result.exit_code == 2
    assert "bad.json: annotations[0].image_id: missing" in result.output
