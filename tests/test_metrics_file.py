"""`uni_seg.metrics_file`: `results/metrics.json` follows its schema, traces the result to the
weights it came from, and never replaces a file that is not ours."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scenes import scored_dataset

from uni_seg.evaluation import evaluate_predictions
from uni_seg.metrics_file import METRICS_SCHEMA, validate_metrics_document, write_metrics_json


def test_metrics_json_refuses_to_replace_a_file_that_is_not_ours(tmp_path):
    rng = np.random.default_rng(9)
    m = evaluate_predictions(*scored_dataset(rng, 2), n_classes=4)
    args = dict(backbone="vit_tiny", weights="none", postproc_params={}, split_sizes={"test": 2})
    path = tmp_path / "metrics.json"
    path.write_text('{"accuracy": 0.99}')  # the user's own results
    with pytest.raises(ValueError, match=r"metrics\.json: not a metrics\.json written by uni_seg.*RESULTS_DIR"):
        write_metrics_json(path, m, **args)
    assert path.read_text() == '{"accuracy": 0.99}'
    path.unlink()
    write_metrics_json(path, m, **args)
    assert write_metrics_json(path, m, **{**args, "extra": {"rerun": True}})["extra"] == {"rerun": True}  # ours


def test_metrics_json_schema(tmp_path):
    rng = np.random.default_rng(9)
    ti, tc, pi, pc, ps = scored_dataset(rng, 2)
    ti.append(np.zeros((30, 30), np.int32))  # an empty image: undefined PQ -> null
    tc.append(np.zeros((30, 30), np.uint8))
    pi.append(np.zeros((30, 30), np.int32))
    pc.append(np.zeros(1, np.int64))
    ps.append(np.zeros(1))
    m = evaluate_predictions(ti, tc, pi, pc, ps, n_classes=4)
    path = tmp_path / "results" / "metrics.json"
    doc = write_metrics_json(path, m, backbone="vit_tiny", weights="none", weights_source="none",
                             postproc_params={"fg_threshold": 0.5}, split_sizes={"train": 10, "val": 2, "test": 3},
                             checkpoint="checkpoints/best_phase2.pth", extra={"tta": False})
    loaded = json.loads(path.read_text())  # strict JSON (no NaN)
    assert loaded == doc and loaded["schema"] == METRICS_SCHEMA
    validate_metrics_document(loaded)
    assert loaded["per_image"][2]["pq"] is None
    assert loaded["model"] == {"backbone": "vit_tiny", "weights": "none", "weights_source": "none",
                               "weights_provenance": None, "checkpoint": "checkpoints/best_phase2.pth"}
    assert loaded["split_sizes"] == {"train": 10, "val": 2, "test": 3}
    del loaded["dataset"]["map"]
    with pytest.raises(ValueError, match="dataset.map"):
        validate_metrics_document(loaded)


def test_metrics_json_traces_the_result_to_its_weights(tmp_path):
    """The model block carries where the backbone's weights came from, as the checkpoint recorded it."""
    rng = np.random.default_rng(3)
    m = evaluate_predictions(*scored_dataset(rng, 1), n_classes=4)
    provenance = {"kind": "file", "backbone": "dinobloom-s", "repo": None, "revision": None, "filename": None,
                  "path": "/weights/model.safetensors", "sha256": "ab" * 32, "message": "Backbone weights for ..."}
    doc = write_metrics_json(tmp_path / "metrics.json", m, backbone="dinobloom-s", weights="/weights",
                             weights_source="file", weights_provenance=provenance, postproc_params={},
                             split_sizes={"test": 1})
    assert json.loads((tmp_path / "metrics.json").read_text())["model"]["weights_provenance"] == provenance
    del doc["model"]["weights_provenance"]
    with pytest.raises(ValueError, match="model.weights_provenance"):
        validate_metrics_document(doc)
