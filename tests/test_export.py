"""`uni_seg.export`: an image's exports read back (`reread_image`) give the same COCO
annotations to the byte, so a resumed run or a merge of shards writes what one run writes; every
cell's GeoJSON polygons are valid."""

from __future__ import annotations

import json

import numpy as np
import pytest
from stand_ins import disks_image

from uni_seg import export
from uni_seg.postproc import Segmentation


def test_issue21_case3_an_image_read_back_gives_the_same_coco_annotations(tmp_path):
    """The scores of cells read back from the cell table are the ones written to COCO: on
    main, a score like 0.1234649 went to COCO as 0.12346 but came back from the table's
    "0.123465" as 0.12347."""
    image, inst = disks_image((60, 80), [(20, 20), (35, 55), (40, 20)], 10)
    classes = np.array([0, 1, 2, 1])
    scores = np.array([0.0, 0.1234649, 0.5, 0.98765432], np.float32)
    class_probs = np.full(4, 0.9, np.float32)
    seg = Segmentation(inst, classes, class_probs, scores, inst, None, {})
    _, shapes = export.export_segmentation(tmp_path, "a", image, seg)
    written = export.coco_annotations(inst, classes, scores, 0, 0, rles=shapes.rles)
    again = export.reread_image(tmp_path, "a")["annotations"]
    assert json.dumps(again) == json.dumps(written)
    assert written[0]["score"] == 0.123465  # the cell table's value, as COCO holds it


# ----------------------------------------------------------------------- 17. valid GeoJSON polygons
# Issue 16, faults met trying the project as a new user: valid GeoJSON polygons.
def test_exported_polygons_are_valid_for_every_cell_of_the_real_masks(real_subset):
    shapely = pytest.importorskip("shapely")

    from uni_seg.data import parse_mask_to_instances, read_mask
    from uni_seg.export import cell_polygons

    checked = 0
    for mask in sorted(real_subset.glob("*/mask/*.png")):
        inst = parse_mask_to_instances(read_mask(mask), source=mask)[0]
        for cell, pieces in cell_polygons(inst).items():
            geometry = shapely.MultiPolygon([(p[0], p[1:]) for p in pieces])
            assert geometry.is_valid, (mask.name, cell, shapely.is_valid_reason(geometry))
            assert abs(geometry.area - (inst == cell).sum()) <= 0.1 * (inst == cell).sum()
            checked += 1
    assert checked > 7000


def test_a_cell_pinched_to_a_diagonal_contact_and_a_cell_with_a_hole_give_valid_polygons():
    shapely = pytest.importorskip("shapely")
    from uni_seg.export import cell_polygons

    inst = np.zeros((20, 20), np.int32)
    inst[2:6, 2:6] = 1
    inst[6:10, 6:10] = 1  # touches the first square only at a corner
    inst[12:19, 12:19] = 2
    inst[15, 15] = 0  # a hole
    polygons = cell_polygons(inst)
    assert shapely.Polygon(polygons[1][0][0], polygons[1][0][1:]).is_valid
    assert len(polygons[2][0]) == 2  # a shell and one hole ring
    assert shapely.Polygon(polygons[2][0][0], polygons[2][0][1:]).is_valid
