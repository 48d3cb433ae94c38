"""§9's smears from elsewhere: VOC and COCO boxes read (and malformed files named), predicted
cells' boxes matched to them as pycocotools matches, recall per class, AP50, precision as a
floor, count error; the folder scored at a working scale; `uni-seg evaluate-boxes`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from stand_ins import EquivariantModel, disks_image
from uni_seg import external
from uni_seg.external import (BOX_MISS_KINDS, AnnotationError, BoxSet, annotated_images, box_pair_table, external_block,
                              external_table, find_box_dataset, instance_boxes, match_boxes, missed_box_kinds, missed_table,
                              read_boxes, read_coco_file, read_voc_file, score_boxes, score_folder)

VOC = """<annotation>
  <filename>{name}.jpg</filename>
  {objects}
</annotation>"""
OBJECT = "<object><name>{label}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"


def write_voc(path: Path, boxes: list[tuple[str, float, float, float, float]]) -> Path:
    """A VOC file for 0-based, end-exclusive boxes (label, x0, y0, x1, y1): VOC's xmin is x0 + 1."""
    objects = "\n  ".join(OBJECT.format(label=b[0], x0=b[1] + 1, y0=b[2] + 1, x1=b[3], y1=b[4]) for b in boxes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(VOC.format(name=path.stem, objects=objects))
    return path


# ------------------------------------------------------------------- reading the boxes
def test_voc_boxes_are_read_zero_based_with_exclusive_ends(tmp_path):
    path = write_voc(tmp_path / "a.xml", [("RBC", 9, 19, 30, 40), ("WBC", 0, 0, 5, 5)])
    boxes = read_voc_file(path)
    np.testing.assert_array_equal(boxes.boxes, [[9, 19, 30, 40], [0, 0, 5, 5]])
    assert boxes.labels == ("RBC", "WBC")
    empty = write_voc(tmp_path / "b.xml", [])
    assert read_voc_file(empty).boxes.shape == (0, 4)


@pytest.mark.parametrize("text, problem", [
    ("<annotation><object>", "not valid XML"),
    ("<notes/>", "not a Pascal VOC annotation (its root is <notes>"),
    ("<annotation><object><bndbox/></object></annotation>", "<object> 1 has no <name>"),
    ("<annotation><object><name>RBC</name></object></annotation>", "<object> 1 (RBC) has no <bndbox>"),
    ("<annotation><object><name>RBC</name><bndbox><xmin>a</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax>"
     "</bndbox></object></annotation>", "<object> 1 (RBC): <xmin> is 'a', not a number"),
    ("<annotation><object><name>RBC</name><bndbox><xmin>1</xmin><ymin>1</ymin><ymax>2</ymax>"
     "</bndbox></object></annotation>", "<xmax> is None, not a number"),
    ("<annotation><object><name>RBC</name><bndbox><xmin>9</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax>"
     "</bndbox></object></annotation>", "ends before it starts"),
])
def test_a_malformed_voc_file_is_one_line_naming_the_file(tmp_path, text, problem):
    path = tmp_path / "Annotations" / "BloodImage_00007.xml"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(AnnotationError) as error:
        read_boxes(path.parent)
    message = str(error.value)
    assert message.startswith(str(path)) and problem in message and "\n" not in message


def coco_doc() -> dict:
    return {"images": [{"id": 1, "file_name": "x/a.png"}, {"id": 2, "file_name": "b.jpg"}],
            "annotations": [{"id": 10, "image_id": 1, "category_id": 3, "bbox": [5, 6, 10, 20]},
                            {"id": 11, "image_id": 1, "category_id": 4, "bbox": [0, 0, 1.5, 2]}],
            "categories": [{"id": 3, "name": "RBC"}, {"id": 4, "name": "Platelets"}]}


def test_coco_boxes_are_read_by_image_name_and_an_image_without_boxes_has_none(tmp_path):
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(coco_doc()))
    boxes = read_boxes(path)
    assert sorted(boxes) == ["a", "b"]
    np.testing.assert_array_equal(boxes["a"].boxes, [[5, 6, 15, 26], [0, 0, 1.5, 2]])
    assert boxes["a"].labels == ("RBC", "Platelets") and boxes["b"].boxes.shape == (0, 4)


@pytest.mark.parametrize("change, problem", [
    (lambda d: "{not json", "not valid JSON"),
    (lambda d: {"images": []}, 'not a COCO file (it needs lists "images", "annotations" and "categories")'),
    (lambda d: {**d, "categories": [{"id": 3}]}, "a category or image entry lacks 'name'"),
    (lambda d: {**d, "annotations": [{"id": 7, "image_id": 9, "category_id": 3, "bbox": [0, 0, 1, 1]}]},
     "annotation 0 (id 7) names no listed image_id and category_id"),
    (lambda d: {**d, "annotations": [{"id": 7, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1]}]},
     'annotation 0 (id 7): "bbox" is [0, 0, 1], not [x, y, width, height]'),
    (lambda d: {**d, "annotations": [{"id": 7, "image_id": 1, "category_id": 3, "bbox": [0, 0, -4, 1]}]},
     "ends before it starts"),
])
def test_a_malformed_coco_file_is_one_line_naming_the_file(tmp_path, change, problem):
    path = tmp_path / "instances.json"
    doc = change(coco_doc())
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(AnnotationError) as error:
        read_coco_file(path)
    message = str(error.value)
    assert message.startswith(str(path)) and problem in message and "\n" not in message


def test_boxes_and_images_are_found_in_the_usual_layouts(tmp_path):
    voc = tmp_path / "voc"
    write_voc(voc / "Annotations" / "a.xml", [])
    (voc / "JPEGImages").mkdir()
    assert find_box_dataset(voc) == (voc / "JPEGImages", voc / "Annotations")
    coco = tmp_path / "coco"
    (coco / "images").mkdir(parents=True)
    (coco / "instances.json").write_text(json.dumps(coco_doc()))
    assert find_box_dataset(coco) == (coco / "images", coco / "instances.json")
    (coco / "other.json").write_text("{}")
    with pytest.raises(AnnotationError, match=re.escape("instances.json, other.json: which one?")):
        find_box_dataset(coco)
    with pytest.raises(AnnotationError, match="no boxes found"):
        find_box_dataset(tmp_path / "voc" / "JPEGImages")
    with pytest.raises(AnnotationError, match="without .xml"):
        read_boxes(voc / "JPEGImages")
    (coco / "images" / "x.txt").write_text("")
    with pytest.raises(AnnotationError, match="neither a folder"):
        read_boxes(coco / "images" / "x.txt")
    with pytest.raises(FileNotFoundError, match="no such annotation file"):
        read_boxes(tmp_path / "missing.json")


def test_images_pair_with_their_boxes_by_name(tmp_path):
    image, _ = disks_image((40, 50), [(20, 25)], 8)
    for name in ("a", "b"):
        cv2.imwrite(str(tmp_path / f"{name}.png"), image)
    truth = {"a": BoxSet(np.zeros((0, 4)), ()), "c": BoxSet(np.zeros((0, 4)), ())}
    pairs, without_image = annotated_images(tmp_path, truth)
    assert [p.name for p, _ in pairs] == ["a.png"] and without_image == ["c"]
    with pytest.raises(AnnotationError, match="none of its 2 images has boxes among the 1 annotated"):
        annotated_images(tmp_path, {"z": truth["a"]})


# ------------------------------------------------------------------- matching and scores
def test_instance_boxes_are_the_cells_bounding_boxes():
    inst = np.zeros((20, 30), np.int32)
    inst[2:5, 3:9] = 1
    inst[10:20, 0:1] = 2
    np.testing.assert_array_equal(instance_boxes(inst), [[3, 2, 9, 5], [0, 10, 1, 20]])
    assert instance_boxes(np.zeros((4, 4), np.int32)).shape == (0, 4)


def random_boxes(rng, n, size=200, side=(10, 40)):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(*side, (n, 2))
    return np.c_[xy, xy + wh]


def test_matching_recall_and_ap50_equal_pycocotools_on_random_boxes():
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(7)
    results, gts, dts = [], [], []
    for image_id in range(1, 6):
        true = random_boxes(rng, 25)
        # detections: jittered copies of most true boxes, plus some strays, with tied scores too
        near = true[rng.random(25) < 0.8] + rng.normal(0, 4, (1, 4))
        pred = np.r_[near, random_boxes(rng, 8)]
        scores = np.round(rng.random(len(pred)), 1)
        labels = tuple(rng.choice(["RBC", "WBC"], 25))
        results.append((BoxSet(true, labels), pred, scores))
        gts += [dict(id=len(gts) + k + 1, image_id=image_id, category_id=1, bbox=[b[0], b[1], b[2] - b[0], b[3] - b[1]],
                     area=(b[2] - b[0]) * (b[3] - b[1]), iscrowd=0) for k, b in enumerate(true)]
        dts += [dict(image_id=image_id, category_id=1, bbox=[b[0], b[1], b[2] - b[0], b[3] - b[1]], score=float(s))
                for b, s in zip(pred, scores)]
    coco = COCO()
    coco.dataset = dict(images=[dict(id=i, height=300, width=300) for i in range(1, 6)], annotations=gts,
                        categories=[dict(id=1, name="cell")])
    coco.createIndex()
    evaluation = COCOeval(coco, coco.loadRes(dts), "bbox")
    evaluation.params.maxDets = [1000, 1000, 1000]
    evaluation.params.areaRng = [[0, 1e10]] * 4
    evaluation.evaluate()
    evaluation.accumulate()
    ours = score_boxes(results)
    assert ours["ap50"] == pytest.approx(evaluation.eval["precision"][0, :, 0, 0, -1].mean(), abs=1e-12)
    assert ours["recall"]["all"] == pytest.approx(evaluation.eval["recall"][0, 0, 0, -1], abs=1e-12)
    assert ours["matched"]["RBC"] + ours["matched"]["WBC"] == round(ours["recall"]["all"] * 125)


def test_recall_per_class_precision_floor_and_count_error_on_a_made_case():
    true = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], float)
    truth = BoxSet(true, ("RBC", "RBC", "WBC"))
    pred = np.array([[0, 0, 10, 11], [41, 0, 50, 10], [100, 100, 110, 110], [0, 0, 9, 10]], float)
    # the last box overlaps the first true box but comes second by score: the true box is taken
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    np.testing.assert_array_equal(match_boxes(true, pred, scores), [0, 2, -1, -1])
    block = score_boxes([(truth, pred, scores), (BoxSet(np.zeros((0, 4)), ()), np.zeros((0, 4)), np.zeros(0))])
    assert block["recall"] == {"RBC": 0.5, "WBC": 1.0, "all": pytest.approx(2 / 3)}
    assert block["annotated"] == {"RBC": 2, "WBC": 1} and block["matched"] == {"RBC": 1, "WBC": 1}
    assert block["predicted"] == 4 and block["precision_floor"] == 0.5
    assert block["count_error"] == 0.5 and block["count_abs_error"] == 0.5  # +1 and 0
    np.testing.assert_allclose(sorted(box_pair_table(true, pred).iou), [0.9, 0.9, 100 / 110])  # overlapping pairs only
    assert block["missed"] == {"RBC": {**dict.fromkeys(BOX_MISS_KINDS, 0), "nothing": 1},
                               "WBC": dict.fromkeys(BOX_MISS_KINDS, 0)}


def test_each_kind_of_missed_box_is_told_apart():
    """A 20 x 20 px true box per case, with the predicted boxes around it that make each kind."""
    true = np.array([[0, 0, 20, 20]], float)
    cases = {
        "split": [[0, 0, 7, 20], [7, 0, 14, 20], [14, 0, 20, 20]],  # three strips, each wholly inside
        "merged": [[0, 0, 44, 20]],  # covers it at 2.2 x its area: it and its neighbour as one
        "too small": [[5, 5, 12, 12]],  # one piece inside, an eighth of it
        "misplaced": [[0, 0, 12, 36]],  # covers 0.6 of it at 1.08 x its area: IoU 240 / 592
        "nothing": [[30, 30, 50, 50], [15, 15, 25, 25]],  # far away, or a corner of a cell mostly elsewhere
    }
    for kind, pred in cases.items():
        pred = np.array(pred, float)
        assert not (match_boxes(true, pred, np.ones(len(pred))) >= 0).any(), kind  # each is a miss
        assert missed_box_kinds(true, pred) == [kind], kind
    assert missed_box_kinds(true, np.zeros((0, 4))) == ["nothing"] and missed_box_kinds(np.zeros((0, 4)), true) == []
    # every box of a batch judged on its own, in order
    pred = np.array([box for kind in ("split", "merged") for box in cases[kind]], float)
    assert missed_box_kinds(np.array([[0, 0, 20, 20], [100, 100, 120, 120]], float), pred) == ["split", "nothing"]


def test_missed_table_has_a_row_per_method_and_class_and_none_for_an_older_block():
    truth = BoxSet(np.array([[0, 0, 20, 20], [40, 0, 60, 20]], float), ("RBC", "WBC"))
    pred = np.array([[0, 0, 20, 20], [40, 0, 47, 20], [47, 0, 54, 20], [54, 0, 60, 20]], float)  # the WBC in thirds
    block = external_block("imgs", "boxes", 1, 1.0, "as given", {"model": score_boxes([(truth, pred, np.ones(4))])})
    table = missed_table(block, {"model": "the model"})
    assert "| method | class | boxes | matched | missed: split | missed: merged |" in table
    assert "| the model | RBC | 1 | 1 | 0 | 0 | 0 | 0 | 0 |" in table and "| the model | WBC | 1 | 0 | 1 | 0 | 0 | 0 | 0 |" in table
    del block["methods"]["model"]["missed"]  # metrics.json written before the kinds were counted
    assert missed_table(block) == ""


def test_a_folder_is_scored_with_boxes_scaled_back_from_the_working_scale(tmp_path):
    image, inst = disks_image((120, 160), [(30, 40), (80, 110)], 16)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    truth = BoxSet(instance_boxes(inst), ("RBC", "WBC"))

    def half_scale(img):  # a perfect method at working scale 0.5
        small = inst[::2, ::2]
        return small, np.r_[0.0, np.ones(int(small.max()))]

    def nothing(img):
        return np.zeros((60, 80), np.int32), np.zeros(1)

    methods = score_folder({"perfect": half_scale, "none": nothing}, [(tmp_path / "a.png", truth)])
    assert methods["perfect"]["recall"] == {"RBC": 1.0, "WBC": 1.0, "all": 1.0}
    assert methods["perfect"]["ap50"] == pytest.approx(1.0) and methods["perfect"]["precision_floor"] == 1.0
    assert methods["none"]["recall"]["all"] == 0.0 and methods["none"]["predicted"] == 0
    block = external_block(tmp_path, tmp_path / "boxes", 1, 0.5, "working scale 0.5, as given", methods)
    table = external_table(block, {"perfect": "a perfect method"})
    assert "| a perfect method | 1.00 | 1.00 | 1.00 | 1.00 | 1.00 |" in table
    assert "recall RBC (1)" in table and "| none | 0.00 | 0.00 | 0.00 | 0.00 | undefined | -2.0 (2.0) |" in table


# ------------------------------------------------------------------- the command
def annotated_folder(folder: Path) -> None:
    """Two images of red disks on cyan, with VOC boxes of the disks: the stand-in model sees
    them (red is bright), and so does the cells' size measurement (they are darker)."""
    for k, centres in enumerate([[(40, 40), (40, 120), (110, 80)], [(60, 60), (100, 150)]]):
        _, inst = disks_image((160, 200), centres, 18, seed=k)
        image = np.where(inst[..., None] > 0, np.uint8([230, 30, 30]), np.uint8([40, 220, 220]))
        cv2.imwrite(str(folder / "JPEGImages" / f"img{k}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        write_voc(folder / "Annotations" / f"img{k}.xml",
                  [("RBC" if i else "WBC", *box) for i, box in enumerate(instance_boxes(inst))])


def test_evaluate_boxes_scores_a_checkpoint_and_the_baseline(tmp_path, monkeypatch, capsys):
    from uni_seg import cli, infer

    (tmp_path / "data" / "JPEGImages").mkdir(parents=True)
    annotated_folder(tmp_path / "data")
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"stand-in")
    meta = {"working_scale": 0.5, "cell_diameter": 18.0, "model_config": {"backbone": "stand-in"}}
    monkeypatch.setattr(infer, "load_inference_model", lambda path, device: (EquivariantModel(), meta))
    monkeypatch.chdir(tmp_path)
    cli.main(["evaluate-boxes", "--checkpoint", str(checkpoint), "--images", "data/JPEGImages", "--boxes",
              "data/Annotations", "--baseline", "5", "--output", "external.json", "--tile-size", "64",
              "--overlap", "16", "--device", "cpu", "--precision", "fp32", "--no-progress"])
    out, err = capsys.readouterr()
    # disks 37 px across, measured ~10 % under as the training images' size is: brought to ~18 px
    assert "2 annotated image(s)" in err and re.search(r"working scale 0\.5\d*: cells 3\d px across \(measured", err)
    assert "| model (model.pth) | 1.00 | 1.00 | 1.00 |" in out  # the stand-in finds every disk
    assert "baseline (min distance 5 px)" in out
    block = json.loads((tmp_path / "external.json").read_text())
    assert block["n_images"] == 2 and set(block["methods"]) == {"model", "baseline"}
    assert block["methods"]["model"]["annotated"] == {"RBC": 3, "WBC": 2}
    assert "The missed boxes, by kind:" in out and "| model (model.pth) | WBC | 2 | 2 | 0 | 0 | 0 | 0 | 0 |" in out


def test_evaluate_boxes_names_a_malformed_file_before_loading_the_model(tmp_path, monkeypatch, capsys):
    from uni_seg import infer

    (tmp_path / "data" / "JPEGImages").mkdir(parents=True)
    annotated_folder(tmp_path / "data")
    (tmp_path / "data" / "Annotations" / "img1.xml").write_text("<annotation><object><name>RBC</name>")
    monkeypatch.setattr(infer, "load_inference_model", lambda *a: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as exit_info:
        external.main(["--checkpoint", str(tmp_path / "none.pth"), "--images", str(tmp_path / "data" / "JPEGImages"),
                       "--boxes", str(tmp_path / "data" / "Annotations")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "img1.xml: not valid XML" in err
    with pytest.raises(SystemExit) as exit_info:
        external.main(["--checkpoint", "c.pth", "--images", "x", "--boxes", "y", "--baseline", "0"])
    assert exit_info.value.code == 2 and "--baseline=0 must be > 0" in capsys.readouterr().err


# ------------------------------------------------------------------- the real BCCD boxes
def test_every_bccd_annotation_reads_and_pairs_with_its_image(bccd_detection):
    root = bccd_detection
    images, boxes = find_box_dataset(root)
    pairs, without_image = annotated_images(images, read_boxes(boxes))
    labels = [label for _, truth in pairs for label in truth.labels]
    assert len(pairs) == 292 and not without_image
    assert {name: labels.count(name) for name in set(labels)} == {"RBC": 3350, "WBC": 301, "Platelets": 292}
    b = np.concatenate([truth.boxes for _, truth in pairs])
    assert 90 < np.median(np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))) < 110  # docs/performance.md's ~100 px red cells at full resolution


# ------------------------------------------------------------------- issue 21
def test_issue21_case7_boxes_outside_their_image_are_clipped_or_dropped_and_said(tmp_path):
    image, inst = disks_image((120, 160), [(30, 40), (80, 110)], 16)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    inside = instance_boxes(inst)
    truth = BoxSet(np.r_[inside, [[150, 100, 190, 140], [300, 300, 320, 330]]], ("RBC", "WBC", "RBC", "RBC"))
    kept, warning = external.boxes_within(truth, (120, 160))
    assert "2 of 4 boxes reach outside the image (160x120): 1 clipped to it, 1 lying wholly outside dropped" == warning
    np.testing.assert_array_equal(kept.boxes[2], [150, 100, 160, 120]) and kept.labels == ("RBC", "WBC", "RBC")
    warnings: dict = {}
    score_folder({"perfect": lambda img: (inst, np.r_[0.0, np.ones(int(inst.max()))])}, [(tmp_path / "a.png", truth)],
                 warnings=warnings)
    assert warnings == {"a.png": warning}
    assert external_block(tmp_path, tmp_path, 1, 1.0, "", {}, warnings=warnings)["warnings"] == warnings


@pytest.mark.parametrize("output, message", [
    ("existing", "exists; pass --overwrite"), ("folder", "is a folder"), ("nowhere/out.json", "does not exist"),
])
def test_issue21_case7_a_bad_output_is_refused_before_any_scoring(tmp_path, monkeypatch, capsys, output, message):
    from uni_seg import infer

    (tmp_path / "data" / "JPEGImages").mkdir(parents=True)
    annotated_folder(tmp_path / "data")
    (tmp_path / "existing").write_text('{"methods": {}}')
    (tmp_path / "folder").mkdir()
    monkeypatch.setattr(infer, "load_inference_model", lambda *a: pytest.fail("the model was loaded"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        external.main(["--checkpoint", "c.pth", "--images", "data/JPEGImages", "--boxes", "data/Annotations",
                       "--output", output])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err
    assert (tmp_path / "existing").read_text() == '{"methods": {}}'


def test_overwrite_replaces_only_an_earlier_results_file(tmp_path, monkeypatch, capsys):
    """Principle 'nothing lost', on a case the issue does not list: --overwrite naming a file
    that is not an earlier results file leaves it alone."""
    (tmp_path / "notes.json").write_text("my notes")
    with pytest.raises(SystemExit) as exit_info:
        external.main(["--checkpoint", "c.pth", "--images", "x", "--boxes", "y", "--output",
                       str(tmp_path / "notes.json"), "--overwrite"])
    assert exit_info.value.code == 2 and "not an earlier results file" in capsys.readouterr().err
    assert (tmp_path / "notes.json").read_text() == "my notes"
