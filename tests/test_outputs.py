"""`uni_seg.outputs`: an image's exports read back (`reread_image`) give the same COCO annotations
to the byte, so a resumed run or a merge of shards writes what one run writes."""
from __future__ import annotations

import json

import numpy as np
from stand_ins import disks_image

from uni_seg import export
from uni_seg import outputs as outputs_mod
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
    again = outputs_mod.reread_image(tmp_path, "a")["annotations"]
    assert json.dumps(again) == json.dumps(written)
    assert written[0]["score"] == 0.123465  # the cell table's value, as COCO holds it

