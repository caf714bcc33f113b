import json
import warnings

import pytest
import torch
from PIL import Image

from detector.data.coco import CocoDetection, DatasetError, objects365_v2_path
from detector.data.transforms import (
    Compose,
    Normalize,
    RandomHorizontalFlip,
    ResizeShortSide,
    collate_padded,
    train_transforms,
)


def _png(path, width=20, height=10, mode="RGB", colour=(10, 20, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (width, height), colour).save(path)


def _image(image_id, file_name=None, width=20, height=10):
    return {"id": image_id, "file_name": file_name or f"{image_id}.png", "width": width, "height": height}


def _ann(ann_id, image_id, bbox, category_id=1, **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def _write(tmp_path, images, annotations, categories=None, name="ann.json", draw=True):
    """Annotation file plus a PNG of the listed size for every image (unless ``draw`` is False)."""
    if draw:
        for image in images:
            _png(tmp_path / "images" / image["file_name"], image["width"], image["height"])
    categories = categories or [{"id": 1, "name": "thing"}]
    path = tmp_path / name
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _load(path, tmp_path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return CocoDetection(path, tmp_path / "images", **kwargs)


def test_labels_follow_sorted_category_ids_whatever_the_listed_order(tmp_path):
    names = {30: "zebra", 4: "apple", 17: "mango"}
    orders = ([30, 4, 17], [17, 30, 4])  # e.g. Objects365 v1 train and val
    datasets = []
    for n, order in enumerate(orders):
        categories = [{"id": cat_id, "name": names[cat_id]} for cat_id in order]
        anns = [_ann(1, 1, [1, 1, 4, 4], category_id=30), _ann(2, 1, [2, 2, 3, 3], category_id=4)]
        path = _write(tmp_path, [_image(1)], anns, categories, name=f"split{n}.json")
        datasets.append(_load(path, tmp_path))
    for dataset in datasets:
        assert dataset.num_classes == 3
        assert dataset.label_to_category_id == {1: 4, 2: 17, 3: 30}
        assert dataset.category_id_to_label == {4: 1, 17: 2, 30: 3}
        assert dataset.class_names == ["apple", "mango", "zebra"]
        assert [c["id"] for c in dataset.categories] == [4, 17, 30]
        assert dataset[0][1]["labels"].tolist() == [3, 1]


def test_image_and_target_format(tmp_path):
    images = [_image(7, "gray.png", 6, 4), _image(9, "rgba.png", 5, 3)]
    anns = [_ann(1, 7, [1, 0.5, 2, 3])]
    path = _write(tmp_path, images, anns, draw=False)
    _png(tmp_path / "images" / "gray.png", 6, 4, mode="L", colour=51)
    _png(tmp_path / "images" / "rgba.png", 5, 3, mode="RGBA", colour=(255, 0, 102, 7))
    dataset = _load(path, tmp_path)
    image, target = dataset[0]
    assert image.dtype == torch.float32 and image.shape == (3, 4, 6)
    assert torch.allclose(image, torch.full_like(image, 0.2))
    assert target["boxes"].dtype == torch.float32
    assert target["boxes"].tolist() == [[1.0, 0.5, 3.0, 3.5]]
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [1]
    assert target["iscrowd"].dtype == torch.int64 and target["iscrowd"].tolist() == [0]
    assert (target["image_id"], target["orig_size"]) == (7, (4, 6))
    assert (target["scale"], target["flipped"]) == (1.0, False)
    image, target = dataset[1]
    assert image.shape == (3, 3, 5)
    assert image[:, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.4])
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert dataset.image_ids == [7, 9]


def test_image_size_disagreeing_with_the_file_is_an_error(tmp_path):
    path = _write(tmp_path, [_image(1, width=20, height=10)], [], draw=False)
    _png(tmp_path / "images" / "1.png", 10, 20)
    with pytest.raises(DatasetError, match=r"1\.png: image is 10x20 pixels but .*ann\.json gives .* 20x10"):
        _load(path, tmp_path)[0]


@pytest.mark.parametrize(
    ("file_name", "expected"),
    [
        ("images/v2/patch8/objects365_v2_00908726.jpg", "patch8/objects365_v2_00908726.jpg"),
        ("images/v1/patch15/objects365_v1_00420917.jpg", "patch15/objects365_v1_00420917.jpg"),
        ("objects365_v2_00908726.jpg", "objects365_v2_00908726.jpg"),
    ],
)
def test_objects365_v2_path(tmp_path, file_name, expected):
    assert objects365_v2_path(tmp_path, file_name) == tmp_path / expected


def test_objects365_v2_file_names_are_rewritten_to_patch_folders(tmp_path):
    images = [_image(1, "images/v2/patch8/objects365_v2_00908726.jpg"), _image(2, "images/v2/patch0/b.jpg")]
    path = _write(tmp_path, images, [_ann(1, 1, [0, 0, 5, 5])], draw=False)
    for patch, name in (("patch8", "objects365_v2_00908726.jpg"), ("patch0", "b.jpg")):
        _png(tmp_path / "images" / patch / name)
    dataset = _load(path, tmp_path, rewrite_objects365_v2_paths=True)
    assert len(dataset) == 2 and dataset[0][1]["boxes"].tolist() == [[0, 0, 5, 5]]
    with pytest.warns(UserWarning, match="2 of 2 listed images are missing"):
        assert len(CocoDetection(path, tmp_path / "images")) == 0


def test_missing_images_are_counted_skipped_and_reported_once(tmp_path):
    images = [_image(i) for i in range(1, 6)]
    anns = [_ann(i, i, [1, 1, 3, 3]) for i in range(1, 6)]
    path = _write(tmp_path, images, anns)
    for gone in (2, 4):
        (tmp_path / "images" / f"{gone}.png").unlink()
    with pytest.warns(UserWarning) as record:
        dataset = CocoDetection(path, tmp_path / "images", train=False)
    assert len(record) == 1
    message = str(record[0].message)
    assert str(path) in message and "2 of 5 listed images are missing" in message
    assert "'2.png', '4.png'" in message
    assert len(dataset) == 3 and dataset.image_ids == [1, 3, 5]
    assert [dataset[i][1]["image_id"] for i in range(3)] == [1, 3, 5]
    assert (dataset.report.num_images, dataset.report.num_missing_images) == (3, 2)
    assert dataset.report.missing_examples == ["2.png", "4.png"]
    assert dataset.report.num_boxes == 3
    assert sorted(dataset.coco.getImgIds()) == [1, 3, 5] and len(dataset.coco.getAnnIds()) == 3


def test_boxes_are_clipped_or_dropped_and_counted(tmp_path):
    anns = [
        _ann(1, 1, [2, 2, 5, 5]),  # inside
        _ann(2, 1, [-3, 1, 6, 12]),  # partly outside: clipped to [0, 1, 3, 10]
        _ann(3, 1, [1, 1, 0, 4]),  # zero width
        _ann(4, 1, [1, 1, 3, -2]),  # negative height
        _ann(5, 1, [25, 2, 3, 3]),  # entirely outside the 20x10 image
    ]
    path = _write(tmp_path, [_image(1)], anns)
    with pytest.warns(UserWarning, match="dropped 3 boxes .* clipped 1 boxes") as record:
        dataset = CocoDetection(path, tmp_path / "images")
    assert len(record) == 1
    assert dataset[0][1]["boxes"].tolist() == [[2, 2, 7, 7], [0, 1, 3, 10]]
    report = dataset.report
    assert (report.num_boxes, report.num_dropped_boxes, report.num_clipped_boxes) == (2, 3, 1)


def test_crowd_boxes_removed_for_training_and_kept_for_evaluation(tmp_path):
    anns = [
        _ann(1, 1, [1, 1, 4, 4], iscrowd=0),
        _ann(2, 1, [5, 5, 4, 4], iscrowd=1),
        _ann(3, 2, [0, 0, 2, 2]),
    ]
    path = _write(tmp_path, [_image(1), _image(2)], anns)
    train, val = _load(path, tmp_path, train=True), _load(path, tmp_path, train=False)
    assert train[0][1]["boxes"].tolist() == [[1, 1, 5, 5]] and train[0][1]["iscrowd"].tolist() == [0]
    assert val[0][1]["boxes"].tolist() == [[1, 1, 5, 5], [5, 5, 9, 9]]
    assert val[0][1]["iscrowd"].tolist() == [0, 1]
    assert train.report.num_crowd_boxes == val.report.num_crowd_boxes == 1
    assert (train.report.num_boxes, val.report.num_boxes) == (2, 3)
    # the third annotation has no iscrowd: it defaults to 0 and the report says so
    assert train[1][1]["iscrowd"].tolist() == [0] and not train.report.has_iscrowd
    assert train.report.has_area is False


def test_missing_area_is_filled_with_box_area_for_evaluation(tmp_path):
    path = _write(tmp_path, [_image(1)], [_ann(1, 1, [1, 1, 4, 2]), _ann(2, 1, [0, 0, 2, 2], area=3.5)])
    dataset = _load(path, tmp_path)
    assert not dataset.report.has_area and dataset.report.has_iscrowd is False
    assert [ann["area"] for ann in dataset.coco.loadAnns(dataset.coco.getAnnIds())] == [8, 3.5]


def test_images_without_boxes_are_kept(tmp_path):
    path = _write(tmp_path, [_image(1), _image(2)], [_ann(1, 2, [1, 1, 2, 2], iscrowd=1)])
    for train in (True, False):
        dataset = _load(path, tmp_path, train=train)
        assert len(dataset) == 2 and dataset[0][1]["boxes"].shape == (0, 4)
        assert dataset[1][1]["boxes"].shape == ((0, 4) if train else (1, 4))


def _valid_dict():
    return {
        "images": [_image(1), _image(2)],
        "annotations": [_ann(1, 1, [1, 1, 2, 2]), _ann(2, 2, [1, 1, 2, 2])],
        "categories": [{"id": 1, "name": "thing"}],
    }


def _without(data, key):
    del data[key]
    return data


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (lambda d: _without(d, "annotations"), ": annotations: missing"),
        (
            lambda d: d["annotations"][1].update(bbox=[1, 2, 3]),
            r": annotations\[1\]\.bbox: expected 4 numbers .*got \[1, 2, 3\]",
        ),
        (lambda d: _without(d["annotations"][0], "category_id"), r": annotations\[0\]\.category_id: missing"),
        (lambda d: d["images"][1].update(id="2"), r": images\[1\]\.id: expected an integer, got '2'"),
        (
            lambda d: d["annotations"][0].update(category_id=5),
            r": annotations\[0\]\.category_id: no category with id 5",
        ),
        (lambda d: d["annotations"][1].update(id=1), r": annotations\[1\]\.id: duplicate id 1"),
        (lambda d: d["annotations"][0].update(iscrowd=2), r": annotations\[0\]\.iscrowd: expected 0 or 1, got 2"),
        (lambda d: d["images"][0].update(width=0), r": images\[0\]\.width: expected a positive number, got 0"),
    ],
)
def test_malformed_records_name_file_list_index_and_field(tmp_path, corrupt, expected):
    data = _valid_dict()
    corrupt(data)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=expected) as error:
        CocoDetection(path, tmp_path)
    assert str(error.value).startswith(f"{path}: ")


def test_bad_json_syntax_names_file_line_and_column(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text('{"images": [],\n "annotations": [,]}')
    with pytest.raises(DatasetError, match=r"ann\.json: invalid JSON at line 2, column 18") as error:
        CocoDetection(path, tmp_path)
    assert isinstance(error.value, ValueError) and str(error.value).startswith(str(path))


# -- transforms ------------------------------------------------------------------------------------


def _boxed_image(height, width, box):
    """Black image with a white filled rectangle at the integer xyxy ``box``."""
    image = torch.zeros(3, height, width)
    x0, y0, x1, y1 = box
    image[:, y0:y1, x0:x1] = 1.0
    target = {"boxes": torch.tensor([box], dtype=torch.float32), "scale": 1.0, "flipped": False}
    return image, target


def _bright_extent(image):
    rows = torch.nonzero(image[0] > 0.5)
    (y0, x0), (y1, x1) = rows.min(dim=0).values.tolist(), rows.max(dim=0).values.tolist()
    return [x0, y0, x1 + 1, y1 + 1]


def test_resize_keeps_aspect_and_caps_the_long_side():
    image, target = _boxed_image(40, 100, (10, 8, 30, 24))
    out, out_target = ResizeShortSide(80, max_size=150)(image, target)
    assert out.shape == (3, 60, 150)  # short side 80 would make the long side 200 > 150
    assert out_target["scale"] == 1.5
    resize = ResizeShortSide((20, 30), max_size=1000, seed=0)
    shorts = set()
    for _ in range(20):
        out, out_target = resize(image, target)
        shorts.add(out.shape[1])
        assert 20 <= out.shape[1] <= 30
        assert out.shape[2] == round(100 * out_target["scale"])
        assert out.shape[2] / out.shape[1] == pytest.approx(2.5, abs=0.06)
    assert len(shorts) > 3


def test_resized_boxes_follow_the_image_content():
    image, target = _boxed_image(40, 60, (12, 8, 36, 28))
    resize = ResizeShortSide((50, 90), max_size=200, seed=3)
    for _ in range(5):
        out, out_target = resize(image, target)
        assert out_target["boxes"].tolist()[0] == pytest.approx(_bright_extent(out), abs=1.0)
        assert torch.allclose(out_target["boxes"], target["boxes"] * out_target["scale"])
        twice, twice_target = resize(out, out_target)
        ratio = twice.shape[1] / out.shape[1]
        assert twice_target["scale"] == pytest.approx(out_target["scale"] * ratio, rel=0.02)


def test_flip_mirrors_boxes_with_the_image_and_twice_is_identity():
    image, target = _boxed_image(10, 20, (2, 3, 7, 9))
    flip = RandomHorizontalFlip(p=1.0)
    once, once_target = flip(image, target)
    assert once_target["boxes"].tolist() == [[13, 3, 18, 9]] and once_target["flipped"]
    assert _bright_extent(once) == [13, 3, 18, 9]
    twice, twice_target = flip(once, once_target)
    assert torch.equal(twice, image) and torch.equal(twice_target["boxes"], target["boxes"])
    assert twice_target["flipped"] is False
    never, never_target = RandomHorizontalFlip(p=0.0)(image, target)
    assert never is image and never_target["flipped"] is False


def test_seeded_transforms_repeat_and_differ_from_each_other():
    image, target = _boxed_image(30, 40, (1, 1, 5, 5))

    def draws(transform):
        outputs = (transform(image, target) for _ in range(10))
        return [(out.shape, out_target["flipped"]) for out, out_target in outputs]

    assert draws(train_transforms((10, 60), 500, seed=5)) == draws(train_transforms((10, 60), 500, seed=5))
    assert draws(train_transforms((10, 60), 500, seed=5)) != draws(train_transforms((10, 60), 500, seed=6))


class _Scales(torch.utils.data.Dataset):
    def __init__(self):
        self.transform = ResizeShortSide((10, 200), max_size=400, seed=0)

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return self.transform(*_boxed_image(10, 10, (1, 1, 2, 2)))[0].shape[-1]


def test_dataloader_workers_do_not_replay_the_same_draws():
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(_Scales(), batch_size=4, num_workers=2)
    first, second = (batch.tolist() for batch in loader)  # one batch per worker
    assert first != second


def test_normalize_and_compose():
    image = torch.full((3, 2, 2), 0.5)
    out, _ = Compose([Normalize(mean=(0.5, 0.25, 0.0), std=(1.0, 0.5, 0.25))])(image, {})
    assert out[:, 0, 0].tolist() == [0.0, 0.5, 2.0]


def test_collate_pads_to_multiples_of_32_with_zeros():
    a, b = torch.ones(3, 40, 50), torch.full((3, 70, 33), 2.0)
    images, sizes, targets = collate_padded([(a, {"n": 0}), (b, {"n": 1})])
    assert images.shape == (2, 3, 96, 64) and sizes == [(40, 50), (70, 33)]
    assert [t["n"] for t in targets] == [0, 1]
    assert torch.equal(images[0, :, :40, :50], a) and images[0].sum() == a.sum()
    assert torch.equal(images[1, :, :70, :33], b) and images[1].sum() == b.sum()
    assert collate_padded([(torch.ones(3, 64, 32), {})])[0].shape == (1, 3, 64, 32)
