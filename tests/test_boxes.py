"""`uni_seg.boxes`: class boxes read from BBBC041 and COCO files (every malformed entry named), and
joined onto a mask's instances by box IoU."""
from __future__ import annotations

import json

import numpy as np
import pytest
from raw_smears import squares

from uni_seg import boxes as boxes_mod
from uni_seg import cache as cache_mod
from uni_seg import data as D
from uni_seg import synthetic as S
from uni_seg.classes import CLASS_SCHEMES, UNKNOWN_CLASS

BBBC041 = CLASS_SCHEMES["bbbc041"]


def bbbc041_doc(entries: dict[str, list[tuple[str, int, int, int, int]]], shape=(100, 120)) -> list[dict]:
    return [{"image": {"pathname": f"/images/{stem}.png", "shape": {"r": shape[0], "c": shape[1], "channels": 3}},
             "objects": [{"bounding_box": {"minimum": {"r": r0, "c": c0}, "maximum": {"r": r1, "c": c1}},
                          "category": cat} for cat, r0, c0, r1, c1 in boxes]}
            for stem, boxes in entries.items()]


# ---------------------------------------------------------------- §1: reading class boxes
def test_bbbc041_and_coco_files_read_the_same_boxes(tmp_path):
    entries = {"a": [("red blood cell", 10, 20, 30, 45), ("ring", 50, 60, 70, 80)], "b": []}
    (tmp_path / "bbbc").mkdir()
    (tmp_path / "bbbc" / "training.json").write_text(json.dumps(bbbc041_doc({"a": entries["a"]})))
    (tmp_path / "bbbc" / "test.json").write_text(json.dumps(bbbc041_doc({"b": []})))
    (tmp_path / "bbbc" / "README.md").write_text("not read")
    from_folder = boxes_mod.load_class_boxes(tmp_path / "bbbc")
    assert dict(from_folder) == entries and from_folder.shapes == {"a": (100, 120), "b": (100, 120)}
    assert from_folder.files["b"].name == "test.json" and len(from_folder.sources) == 2
    coco = {"images": [{"id": 7, "file_name": "a.jpg", "height": 100, "width": 120},
                       {"id": 8, "file_name": "b.png", "height": 100, "width": 120}],
            "categories": [{"id": 1, "name": "red blood cell"}, {"id": 2, "name": "ring"}],
            "annotations": [{"image_id": 7, "category_id": 1, "bbox": [20, 10, 25, 20]},
                            {"image_id": 7, "category_id": 2, "bbox": [60, 50, 20, 20]}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    from_coco = boxes_mod.load_class_boxes(tmp_path / "coco.json")
    assert dict(from_coco) == entries and from_coco.shapes == from_folder.shapes


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a JSON file"),
    ('{"images": []}', "neither BBBC041's format"),
    ('[{"image": {"pathname": "/i/a.png"}}]', "entry 0 is not"),
    (json.dumps(bbbc041_doc({"a": [("ring", 5, 5, 5, 9)]})), "empty or inverted box"),
    (json.dumps(bbbc041_doc({"a": [("ring", 5, "x", 9, 9)]})), "not all finite numbers"),
    (json.dumps(bbbc041_doc({"a": [("", 1, 1, 9, 9)]})), "is not a name"),
    (json.dumps(bbbc041_doc({"a": []}) * 2), "image 'a' has class boxes twice"),
    (json.dumps([{"image": {"pathname": "/i/a.png"}, "objects": [{"category": "ring"}]}]), "lacks 'bounding_box'"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.png"}], "categories": [], "annotations": [
        {"image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5]}]}), "annotation 0: image_id 1 or category_id 3"),
])
def test_a_malformed_box_file_is_an_error_naming_it(tmp_path, content, message):
    path = tmp_path / "boxes.json"
    path.write_text(content)
    with pytest.raises(D.DataError, match=message) as info:
        boxes_mod.load_class_boxes(path)
    assert str(path) in str(info.value)


def test_missing_box_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        boxes_mod.load_class_boxes(tmp_path / "nowhere.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(D.DataError, match="holds no"):
        boxes_mod.load_class_boxes(tmp_path / "empty")


# ---------------------------------------------------------------- §1: the join
def test_each_instance_takes_the_class_of_its_best_box_or_stays_unknown():
    inst = squares((60, 100), [(0, 0, 20, 20), (0, 30, 20, 50), (0, 60, 20, 80), (30, 0, 50, 20), (30, 30, 50, 50)])
    boxes = [("red blood cell", 0, 0, 20, 21),     # instance 1 (IoU 20/21)
             ("trophozoite", 1, 1, 20, 20),        # also overlaps 1, less well: loses
             ("leukocyte", 0, 30, 20, 50),         # instance 2
             ("schizont", 0, 60, 40, 80),          # instance 3 at IoU 0.5 exactly: a match (>= min_iou)
             ("difficult", 30, 0, 50, 20),         # instance 4: matched, but of no certain class
             ("red blood cell", 55, 85, 60, 100)]  # on background: matches nothing
    join = boxes_mod.join_class_boxes(inst, boxes, "bbbc041")
    # instance 5 has no box at all
    assert join.classes.tolist() == [0, 1, 3, 2, -1, -1]
    assert join.box_of.tolist() == [-1, 0, 2, 3, 4, -1]
    assert join.summary() == {"instances": 5, "matched": 4, "unknown": 2, "boxes": 6, "unmatched_boxes": 2,
                              "categories": {"red blood cell": [2, 1], "trophozoite": [1, 0], "leukocyte": [1, 1],
                                             "schizont": [1, 1], "difficult": [1, 1]}}
    np.testing.assert_array_equal(boxes_mod.instance_classes_from_boxes(inst, boxes, BBBC041), join.classes)
    stages = boxes_mod.instance_classes_from_boxes(inst, boxes, "bbbc041-stages")
    assert stages.tolist() == [0, 1, 6, 4, -1, -1]
    strict = boxes_mod.instance_classes_from_boxes(inst, boxes, BBBC041, min_iou=0.6)
    assert strict.tolist() == [0, 1, 3, -1, -1, -1]
    with pytest.raises(ValueError, match="'platelet' is not one of"):
        boxes_mod.instance_classes_from_boxes(inst, [("platelet", 0, 0, 20, 20)], BBBC041)


def test_a_tie_in_box_iou_goes_to_the_box_holding_more_of_the_cell():
    inst = np.zeros((40, 40), np.int32)
    inst[0:20, 0:10] = 1  # most of the cell on the left of its 20 x 20 bounding box ...
    inst[0:20, 19] = 1    # ... and one column on its right edge
    left, right = ("ring", 0, -2, 20, 18), ("schizont", 0, 2, 20, 22)  # 200 and 180 of its pixels
    assert np.ptp(boxes_mod.box_iou(np.array([[0, 0, 20, 20]]), np.array([left[1:], right[1:]]))) == 0  # a tie
    assert boxes_mod.match_class_boxes(inst, [right, left])[1] == 1
    assert boxes_mod.match_class_boxes(inst, [left, right])[1] == 0


def test_scheme_class_maps_for_every_source():
    inst = squares((20, 40), [(0, 0, 10, 10), (0, 20, 10, 30)])
    mask_cls = np.where(inst == 2, 3, np.where(inst > 0, 1, 0)).astype(np.uint8)
    binary, join = boxes_mod.scheme_class_map(inst, mask_cls, "binary")
    assert join is None and binary.dtype == np.int8 and set(np.unique(binary[inst == 2])) == {1}
    np.testing.assert_array_equal(boxes_mod.scheme_class_map(inst, mask_cls, "colour")[0], mask_cls)
    boxed, join = boxes_mod.scheme_class_map(inst, mask_cls, "bbbc041", [("ring", 0, 0, 10, 10)])
    assert boxed[5, 5] == 2 and boxed[5, 25] == UNKNOWN_CLASS and boxed[15, 5] == 0 and join.summary()["unknown"] == 1
    assert (boxes_mod.scheme_class_map(inst, mask_cls, "bbbc041", None)[0][inst > 0] == UNKNOWN_CLASS).all()
    counts, unknown = boxes_mod.instance_class_counts(inst, boxed, 4)
    assert counts.tolist() == [0, 0, 1, 0] and unknown == 1


def _majority(labels: np.ndarray) -> int:
    """The most frequent non-zero label of `labels`, 0 when there is none."""
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return int(counts.argmax()) if counts.any() else 0


def test_synthetic_boxes_join_onto_the_parsed_masks_as_drawn(boxed_synthetic):
    root, boxes_path = boxed_synthetic
    boxes = boxes_mod.load_class_boxes(boxes_path)
    scan = D.scan_dataset(root)
    n = {"instances": 0, "as drawn": 0, "platelets unknown": 0, "boxless unknown": 0, "empty boxes": 0}
    for pair in scan.pairs["train"] + scan.pairs["test"]:
        true_inst, true_cls = S.load_synthetic_truth(pair)
        inst, _ = D.parse_mask_to_instances(D.read_mask(pair.mask_path), min_area=20)
        join = boxes_mod.join_class_boxes(inst, boxes[pair.stem], BBBC041)
        boxed, empty = {}, 0  # the class each true cell was boxed with; boxes on bare background
        for category, r0, c0, r1, c1 in boxes[pair.stem]:
            cell = _majority(true_inst[r0:r1, c0:c1])
            if cell:
                boxed[cell] = BBBC041.class_of(category)
            else:
                empty += 1
        assert join.summary()["unmatched_boxes"] >= empty
        n["empty boxes"] += empty
        for label in range(1, int(inst.max()) + 1):
            cell = _majority(np.where(inst == label, true_inst, 0))
            got, expected = join.classes[label], boxed.get(cell, UNKNOWN_CLASS)
            n["instances"] += 1
            n["as drawn"] += got == expected
            is_platelet = np.bincount(true_cls[true_inst == cell]).argmax() == 3
            n["platelets unknown"] += bool(is_platelet and got == UNKNOWN_CLASS)
            n["boxless unknown"] += bool(not is_platelet and cell not in boxed and got == UNKNOWN_CLASS)
    # A mask instance takes its cell's class, except where the annotators' lines cut a cell in
    # pieces too small for its box (a handful on these crowded smears).
    assert n["as drawn"] >= 0.95 * n["instances"], n
    assert n["platelets unknown"] and n["boxless unknown"] and n["empty boxes"], n


def test_boxes_drawn_on_another_image_size_are_an_error(boxed_synthetic, tmp_path):
    root, boxes_path = boxed_synthetic
    doc = json.loads(boxes_path.read_text())
    doc[0]["image"]["shape"]["r"] += 10
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(D.DataError, match=r"bad\.json: the class boxes of .* were drawn on a 260x210 image"):
        cache_mod.build_processed_cache(root, tmp_path / "p", 0.5, 0.25, 0, 20, scheme="bbbc041", class_boxes=bad)
    doc[0]["image"]["shape"]["r"] -= 10
    doc[0]["objects"].append({"bounding_box": {"minimum": {"r": 0, "c": 0}, "maximum": {"r": 5, "c": 5}},
                              "category": "platelet"})
    bad.write_text(json.dumps(doc))
    with pytest.raises(D.DataError, match=r"bad\.json: image .*'platelet' is not one of"):
        cache_mod.build_processed_cache(root, tmp_path / "p", 0.5, 0.25, 0, 20, scheme="bbbc041", class_boxes=bad)


def test_the_join_on_the_real_subset_reproduces_the_measured_counts(real_subset):
    root = real_subset
    boxes = boxes_mod.load_class_boxes(root / "classes")
    totals, categories = {"instances": 0, "matched": 0, "boxes": 0, "unmatched_boxes": 0}, {}
    for pairs in D.find_dataset(root).values():
        for pair in pairs:
            inst, _ = D.parse_mask_to_instances(D.read_mask(pair.mask_path), min_area=30, source=pair.mask_path)
            summary = boxes_mod.join_class_boxes(inst, boxes[pair.stem], BBBC041).summary()
            for key in totals:
                totals[key] += summary[key]
            for category, (n, matched) in summary["categories"].items():
                categories[category] = [a + b for a, b in zip(categories.get(category, [0, 0]), (n, matched))]
    assert totals == {"instances": 7187, "matched": 6081, "boxes": 6816, "unmatched_boxes": 735}
    assert round(100 * totals["matched"] / totals["instances"], 1) == 84.6
    assert categories == {"red blood cell": [6637, 5909], "trophozoite": [124, 118], "ring": [26, 26],
                          "schizont": [16, 15], "gametocyte": [9, 9], "leukocyte": [4, 4]}
