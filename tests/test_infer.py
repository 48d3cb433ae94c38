"""Tiled whole-image inference, TTA, exports and the folder CLI of `uni_seg.infer`.

The model is replaced by the small stand-ins of `tests/stand_ins.py`.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from stand_ins import EquivariantModel, PointwiseModel, disks_image, exact_hv

from uni_seg import predict as predict_mod
from uni_seg import outputs as outputs_mod
from uni_seg import classes as classes_mod
from uni_seg import cache as cache_mod, procs as procs_mod
from uni_seg import data, export, infer
from uni_seg.files import ATOMIC_TEMP_GLOB

# ---------------------------------------------------------------- tiling and blending

def test_tile_starts_cover_the_axis_with_the_overlap():
    for length, tile, overlap in [(600, 224, 64), (800, 224, 64), (224, 224, 64), (100, 224, 32), (1000, 128, 0)]:
        starts = data.tile_starts(length, tile, overlap)
        assert starts[0] == 0
        if length > tile:
            assert starts[-1] + tile == length
            assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
            assert all(b > a for a, b in zip(starts, starts[1:]))


def test_blend_window_is_a_partition_of_unity_over_the_overlap():
    t, o = 64, 16
    w = predict_mod.blend_window(t, o)
    assert w.min() > 0 and w.max() == pytest.approx(1.0)
    row = w[t // 2]
    assert np.allclose(row[t - o :] + row[:o], 1.0)  # right ramp of one tile + left ramp of the next


@pytest.mark.parametrize("tile, overlap", [(48, 0), (64, 16), (96, 32), (224, 64)])
def test_tiled_maps_equal_a_single_pass_for_any_tile_size(tile, overlap):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(150, 190, 3)).astype(np.uint8)
    model = PointwiseModel()
    single = predict_mod.predict_maps(model, image, predict_mod.InferenceSettings(tile_size=192, overlap=0))  # one tile covers it all
    tiled = predict_mod.predict_maps(model, image, predict_mod.InferenceSettings(tile_size=tile, overlap=overlap, batch_size=3))
    for key in ("np", "hv", "nc"):
        assert tiled[key].dtype == np.float32
        np.testing.assert_allclose(tiled[key], single[key], atol=1e-5)
    assert tiled["np"].shape == (150, 190) and tiled["hv"].shape == (2, 150, 190) and tiled["nc"].shape == (4, 150, 190)
    np.testing.assert_allclose(tiled["nc"].sum(0), 1.0, atol=1e-5)
    # and it is the model's own output, not a blurred version of it
    expected_np = 1 / (1 + np.exp(-(image[..., 0] / 255.0 - 0.5) * 6))
    np.testing.assert_allclose(tiled["np"], expected_np, atol=1e-5)


def test_working_scale_resizes_and_small_images_are_padded():
    image = np.full((101, 77, 3), 200, np.uint8)
    maps = predict_mod.predict_maps(PointwiseModel(), image, predict_mod.InferenceSettings(working_scale=0.5, tile_size=64, overlap=16))
    assert maps["np"].shape == data.working_shape(101, 77, 0.5) == (50, 38)
    # the image travels with its maps, at their scale, for the post-processing's stain rule
    np.testing.assert_array_equal(maps["rgb"], data.resize_image(image, (50, 38)))
    tiny = predict_mod.predict_maps(PointwiseModel(), image[:5, :7], predict_mod.InferenceSettings(tile_size=32, overlap=8))
    assert tiny["np"].shape == (5, 7) and tiny["rgb"].shape == (5, 7, 3)  # not the padded tile


def test_predict_maps_rejects_bad_arguments():
    model = PointwiseModel()
    image = np.zeros((40, 40, 3), np.uint8)
    with pytest.raises(ValueError, match="multiple of 16"):
        predict_mod.predict_maps(model, image, predict_mod.InferenceSettings(tile_size=100))
    with pytest.raises(ValueError, match="overlap"):
        predict_mod.predict_maps(model, image, predict_mod.InferenceSettings(tile_size=64, overlap=64))
    with pytest.raises(ValueError, match="uint8"):
        predict_mod.predict_maps(model, image.astype(np.float32), predict_mod.InferenceSettings(tile_size=64, overlap=0))


def test_predict_maps_restores_training_mode_and_accepts_bf16():
    model = PointwiseModel().train()
    image = np.random.default_rng(0).integers(0, 256, size=(70, 70, 3)).astype(np.uint8)
    fp32 = predict_mod.predict_maps(model, image, predict_mod.InferenceSettings(tile_size=64, overlap=16))
    bf16 = predict_mod.predict_maps(model, image, predict_mod.InferenceSettings(tile_size=64, overlap=16, precision="bf16"))
    assert model.training
    np.testing.assert_allclose(bf16["np"], fp32["np"], atol=0.05)


# ---------------------------------------------------------------- TTA

def test_each_tta_transform_is_undone_exactly_including_hv_signs():
    image, _ = disks_image((64, 64), [(20, 18), (40, 44), (10, 50)], 9)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    model = EquivariantModel()
    plain = predict_mod._model_maps(model, x, "fp32")
    assert plain[:, 1:3].abs().max() > 0.9  # HV carries signal: a wrong sign would show
    for flip, k in predict_mod.TTA_TRANSFORMS:
        out = predict_mod._tta_inverse(predict_mod._model_maps(model, predict_mod._tta_forward(x, flip, k), "fp32"), flip, k, slice(1, 3))
        torch.testing.assert_close(out, plain, atol=1e-5, rtol=0, msg=f"transform flip={flip} k={k}")


def test_tta_output_equals_plain_output_for_an_equivariant_model():
    centres = [(20, 20), (30, 62), (60, 40), (95, 110), (64, 64), (100, 30), (15, 150)]
    image, _ = disks_image((130, 170), centres, 11)
    model = EquivariantModel()
    plain = predict_mod.predict_maps(model, image, predict_mod.InferenceSettings(tile_size=64, overlap=16))
    tta = predict_mod.predict_maps(model, image, predict_mod.InferenceSettings(tile_size=64, overlap=16, tta=True, batch_size=4))
    for key in ("np", "hv", "nc"):
        np.testing.assert_allclose(tta[key], plain[key], atol=1e-5)


# ---------------------------------------------------------------- segment_image

def test_segment_image_returns_cells_at_the_original_resolution():
    from uni_seg.metrics import panoptic_quality

    centres = [(40, 40), (40, 130), (120, 60), (130, 170), (200, 100), (60, 210)]
    image, true = disks_image((240, 260), centres, 22)
    seg = predict_mod.segment_image(EquivariantModel(), image, predict_mod.InferenceSettings(working_scale=0.5, tile_size=96, overlap=32))
    assert seg.inst.shape == (240, 260) and seg.inst.dtype == np.int32
    assert seg.inst_working.shape == (120, 130)
    assert seg.n_cells == len(centres) == len(seg.scores) - 1 == len(seg.class_probs) - 1
    assert np.all(seg.scores[1:] > 0.99)
    assert set(seg.classes[1:].tolist()) <= {1, 2, 3}
    assert panoptic_quality(true, seg.inst)["pq"] > 0.85
    assert seg.class_map().shape == (240, 260)
    assert set(seg.seconds) == {"model", "postproc", "resize"}


def test_resize_labels_is_nearest_and_keeps_labels():
    labels = np.arange(12, dtype=np.int32).reshape(3, 4)
    up = data.resize_labels(labels, (6, 8))
    np.testing.assert_array_equal(up, np.kron(labels, np.ones((2, 2), np.int32)))
    np.testing.assert_array_equal(data.resize_labels(up, (3, 4)), labels)


# ---------------------------------------------------------------- RLE against pycocotools

def _rle_cases():
    rng = np.random.default_rng(3)
    cases = [np.zeros((7, 5), bool), np.ones((7, 5), bool), rng.random((31, 17)) > 0.5]
    m = np.zeros((9, 6), bool)
    m[0, 0] = m[-1, -1] = True
    cases.append(m)
    col = np.zeros((8, 8), bool)
    col[:, 2:5] = True  # runs that continue from one column into the next
    cases.append(col)
    cases.append(rng.random((200, 300)) > 0.97)
    return cases


def test_rle_encode_matches_pycocotools_byte_for_byte():
    mask_api = pytest.importorskip("pycocotools.mask")
    for mask in _rle_cases():
        ours = export.rle_encode(mask)
        ref = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert ours["size"] == list(ref["size"])
        assert ours["counts"] == ref["counts"].decode("ascii")
        np.testing.assert_array_equal(export.rle_decode(ref), mask)
        np.testing.assert_array_equal(mask_api.decode({"size": ours["size"], "counts": ours["counts"].encode()}), mask)


def test_instance_rles_from_boxes_match_full_mask_encoding():
    mask_api = pytest.importorskip("pycocotools.mask")
    inst = np.zeros((40, 30), np.int32)
    inst[0:40, 3:6] = 1  # full height: runs join across columns
    inst[5:9, 10:20] = 2
    inst[30:40, 25:30] = 3  # touches the bottom-right corner
    inst[12, 12] = 5  # id 4 absent
    rles = export.instance_rles(inst)
    assert sorted(rles) == [1, 2, 3, 5]
    for cell, rle in rles.items():
        ref = mask_api.encode(np.asfortranarray((inst == cell).astype(np.uint8)))
        assert rle["counts"] == ref["counts"].decode("ascii")
        assert rle["area"] == int(mask_api.area(ref))
        assert rle["bbox"] == [int(v) for v in mask_api.toBbox(ref)]


# ---------------------------------------------------------------- per-image exports

def test_cell_table_measures_each_cell():
    inst = np.zeros((50, 60), np.int32)
    inst[10:20, 5:25] = 1  # 10 x 20 rectangle
    ys, xs = np.indices(inst.shape)
    inst[(ys - 35) ** 2 + (xs - 40) ** 2 <= 100] = 2
    image = np.full((50, 60, 3), 100, np.uint8)
    classes, probs, scores = np.array([0, 1, 3]), np.array([0, 0.9, 0.7], np.float32), np.array([0, 0.8, 0.6], np.float32)
    table = export.cell_table(inst, image, classes, probs, scores)
    assert list(table) == list(export.CELL_TABLE_COLUMNS)
    assert table["id"].tolist() == [1, 2]
    assert table["class"].tolist() == ["RBC", "Platelet"]
    assert table["area"].tolist() == [200, int((inst == 2).sum())]
    assert table["centroid_x"][0] == pytest.approx(14.5) and table["centroid_y"][0] == pytest.approx(14.5)
    assert table["mean_intensity"][0] == pytest.approx(100)
    assert table["solidity"][0] == pytest.approx(1.0)
    assert table["eccentricity"][1] < 0.2


def test_cell_boxes_are_scipys_find_objects_also_for_runs_across_columns():
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    maps = [rng.integers(0, 6, (h, w)).astype(np.int32) for h, w in rng.integers(1, 25, (100, 2))]
    tall = np.zeros((4, 5), np.int32)
    tall[:, 1:3] = 7  # one run covers two whole columns; cells 1..6 absent
    maps += [tall, np.zeros((3, 3), np.int32)]
    for inst in maps:
        ids, boxes = export.cell_boxes(inst)
        expected = [(k + 1, (b[0].start, b[0].stop, b[1].start, b[1].stop))
                    for k, b in enumerate(ndi.find_objects(inst)) if b is not None]
        assert [(int(i), tuple(b)) for i, b in zip(ids, boxes.tolist())] == expected


def test_vertex_text_is_the_json_of_the_coordinates():
    rings = [np.array([[0.25, 0.5], [12345.75, 0.0], [-3.0, -1000.5], [0.25, 0.5]]), np.array([[9.0, 10.0]]),
             np.array([[99.5, 100.25], [100.0, 9.75]])]
    texts = export._ring_texts(rings)
    assert [json.loads(t) for t in texts] == [r.tolist() for r in rings]
    assert texts[1] == "[[9,10]]"
    with pytest.raises(ValueError, match="multiples of 0.25"):
        export._ring_texts([np.array([[0.1, 0.0]])])


def test_polygons_and_geojson_follow_qupath_format():
    inst = np.zeros((60, 60), np.int32)
    ys, xs = np.indices(inst.shape)
    inst[(ys - 20) ** 2 + (xs - 20) ** 2 <= 144] = 1
    inst[40:45, 40:42] = 2
    inst[50:52, 5:8] = 2  # a cell in two pieces -> MultiPolygon
    inst[0, 59] = 3  # one pixel
    polygons = export.cell_polygons(inst)
    ring = np.asarray(polygons[1][0][0])  # the first piece's outline
    assert (ring[0] == ring[-1]).all() and len(ring) >= 4
    x, y = ring[:, 0], ring[:, 1]
    area = 0.5 * abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))
    assert 0.85 * (inst == 1).sum() < area <= (inst == 1).sum()
    assert abs(x.mean() - 20.5) < 1 and abs(y.mean() - 20.5) < 1  # pixel centres at +0.5
    table = export.cell_table(inst, np.zeros((60, 60, 3), np.uint8), np.array([0, 1, 2, 3]),
                             np.ones(4, np.float32), np.ones(4, np.float32))
    geo = json.loads(json.dumps(export.cells_geojson(inst, table, image_name="x")))
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == 3
    kinds = [f["geometry"]["type"] for f in geo["features"]]
    assert kinds == ["Polygon", "MultiPolygon", "Polygon"]
    assert geo["features"][0]["geometry"]["coordinates"] == [r.tolist() for r in polygons[1][0]]
    assert geo["features"][1]["geometry"]["coordinates"] == [[r.tolist() for r in p] for p in polygons[2]]
    props = geo["features"][0]["properties"]
    assert props["objectType"] == "detection"
    assert props["classification"] == {"name": "RBC", "color": list(classes_mod.CLASS_DISPLAY_COLOURS[1])}
    assert props["measurements"]["area"] == (inst == 1).sum()
    with pytest.raises(ValueError, match="object_type"):
        export.cells_geojson(inst, table, object_type="cell")


def test_label_png_is_16_bit_and_refuses_too_many_cells(tmp_path):
    inst = np.arange(40 * 50, dtype=np.int32).reshape(40, 50) * 30
    path = export.write_label_png(tmp_path / "x.png", inst)
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, inst)
    with pytest.raises(ValueError, match="65535"):
        export.write_label_png(tmp_path / "y.png", np.full((3, 3), 70000, np.int32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]  # no partial files left


def test_overlay_draws_outlines_in_class_colours():
    inst = np.zeros((30, 30), np.int32)
    inst[5:15, 5:15] = 1
    inst[18:28, 18:28] = 2
    image = np.full((30, 30, 3), 50, np.uint8)
    out = export.draw_overlay(image, inst, np.array([0, 2, 3]))
    assert tuple(out[5, 10]) == classes_mod.CLASS_DISPLAY_COLOURS[2]
    assert tuple(out[18, 20]) == classes_mod.CLASS_DISPLAY_COLOURS[3]
    assert tuple(out[10, 10]) == (50, 50, 50) and tuple(out[0, 0]) == (50, 50, 50)


# ---------------------------------------------------------------- folder inference and CLI

def _write_folder(folder: Path) -> dict[str, np.ndarray]:
    folder.mkdir()
    truths = {}
    for i, centres in enumerate([[(30, 30), (30, 90), (80, 60)], [(40, 40), (90, 100)]]):
        image, true = disks_image((120, 140), centres, 16, seed=i)
        cv2.imwrite(str(folder / f"img{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        truths[f"img{i}"] = true
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (folder / "notes.txt").write_text("not an image, ignored")
    return truths


def test_folder_inference_writes_every_export_and_skips_a_bad_image(tmp_path):
    truths = _write_folder(tmp_path / "in")
    out = tmp_path / "out"
    report = infer.run_folder_inference(EquivariantModel(), tmp_path / "in", out, predict_mod.InferenceSettings(tile_size=64, overlap=16), progress=False)
    assert list(report.failed) == ["broken.png"] and "broken.png" in report.failed["broken.png"]
    assert report.n_ok == 2
    for stem, true in truths.items():
        labels = cv2.imread(str(out / f"{stem}_instances.png"), cv2.IMREAD_UNCHANGED)
        assert labels.dtype == np.uint16 and labels.shape == true.shape and labels.max() == true.max()
        assert cv2.imread(str(out / f"{stem}_overlay.jpg")).shape == true.shape + (3,)  # a JPEG to look at
        with open(out / f"{stem}_cells.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == true.max() and set(export.CELL_TABLE_COLUMNS) == set(rows[0])
        geo = json.loads((out / f"{stem}_cells.geojson").read_text())
        assert len(geo["features"]) == true.max()
    with open(out / "summary.csv") as f:
        summary = {r["image"]: r for r in csv.DictReader(f)}
    assert summary["broken.png"]["status"] == "failed" and summary["img0.png"]["n_cells"] == "3"
    assert int(summary["img1.png"]["n_RBC"]) + int(summary["img1.png"]["n_WBC"]) + int(summary["img1.png"]["n_Platelet"]) == 2
    assert not list(out.glob(ATOMIC_TEMP_GLOB))

    coco_api = pytest.importorskip("pycocotools.coco")
    mask_api = pytest.importorskip("pycocotools.mask")
    doc = json.loads(report.coco_path.read_text())
    assert [im["file_name"] for im in doc["images"]] == ["img0.png", "img1.png"]
    assert len(doc["annotations"]) == 5 and all(0 < a["score"] <= 1 for a in doc["annotations"])
    coco = coco_api.COCO()
    coco.dataset = doc
    coco.createIndex()
    labels = cv2.imread(str(out / "img0_instances.png"), cv2.IMREAD_UNCHANGED)
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    for cell, ann in enumerate(anns, 1):
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), labels == cell)
        assert ann["area"] == int(mask_api.area(ann["segmentation"]))


def test_cli_runs_on_a_folder_and_exits_1_when_an_image_failed(tmp_path, monkeypatch, capsys):
    _write_folder(tmp_path / "in")
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"stand-in")
    meta = {"working_scale": 0.5, "model_config": {"backbone": "stand-in", "n_classes": 4}}
    monkeypatch.setattr(infer, "load_inference_model", lambda path, device: (EquivariantModel(), meta))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        infer.main(["--checkpoint", str(checkpoint), "--input", "in", "--output", "out", "--tile-size", "32",
                    "--overlap", "8", "--device", "cpu", "--precision", "fp32", "--no-progress"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "2 image(s) segmented, 1 failed" in err and "working scale 0.5" in err
    assert (tmp_path / "out" / "img1_cells.geojson").exists()
    # a clean folder exits normally; --limit; an explicit but missing --postproc is an error
    (tmp_path / "in" / "broken.png").unlink()
    infer.main(["--checkpoint", str(checkpoint), "--input", "in", "--output", "out2", "--limit", "1",
                "--tile-size", "32", "--overlap", "8", "--device", "cpu", "--no-progress"])
    assert sorted(p.name for p in (tmp_path / "out2").glob("*.geojson")) == ["img0_cells.geojson"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # an expected error: one line, no traceback
        infer.main(["--checkpoint", str(checkpoint), "--input", "in", "--output", "out3", "--postproc", "nope.json"])
    assert exit_info.value.code == 2 and "nope.json" in capsys.readouterr().err


def test_read_image_names_the_bad_file(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.jpg"):
        data.read_image(bad)


def test_predict_split_reads_the_processed_cache(tmp_path):
    split = tmp_path / "processed" / "test"
    split.mkdir(parents=True)
    for i in range(2):
        image, inst = disks_image((70, 90), [(20, 20), (45, 60)], 12, seed=i)
        cache_mod.save_processed_atomic(split / f"s{i}.npy", image, inst, (inst > 0).astype(np.int8))
    preds = infer.predict_split(EquivariantModel(), tmp_path / "processed", "test", predict_mod.InferenceSettings(tile_size=64, overlap=16))
    assert [p.stem for p in preds] == ["s0", "s1"]
    p = preds[0]
    assert p.pred_inst.shape == p.true_inst.shape == (70, 90) and p.pred_inst.max() == 2
    assert p.pred_cls.shape == (70, 90) and p.maps["hv"].shape == (2, 70, 90)
    assert set(p.score_by_id) == {1, 2}
    assert infer.predict_split(EquivariantModel(), tmp_path / "processed", "test",
                               predict_mod.InferenceSettings(tile_size=64, overlap=16), limit=1, keep_maps=False)[0].maps is None
    with pytest.raises(FileNotFoundError, match="val"):
        infer.predict_split(EquivariantModel(), tmp_path / "processed", "val")


def test_real_image_runs_through_the_whole_image_path(real_subset):
    folder = real_subset / "test" / "original"
    path = sorted(folder.iterdir())[0]
    image = data.read_image(path)
    assert image.shape == (1200, 1600, 3)
    seg = predict_mod.segment_image(PointwiseModel(), image, predict_mod.InferenceSettings(working_scale=0.5, tile_size=224, overlap=64))
    assert seg.inst.shape == (1200, 1600) and seg.maps["np"].shape == (600, 800)


def test_cell_outlines_equal_skimage_inner_boundaries():
    from skimage.segmentation import find_boundaries

    labels = np.random.default_rng(0).integers(0, 4, (50, 60))
    np.testing.assert_array_equal(export.cell_outlines(labels), find_boundaries(labels, mode="inner"))


def test_python_m_entry_point_with_a_real_checkpoint(tmp_path):
    """`python -m uni_seg.infer` end to end: a vit_tiny checkpoint in the training format."""
    import subprocess
    import sys

    from uni_seg import checkpoints
    from uni_seg import model as model_mod
    torch.manual_seed(0)
    model = model_mod.build_model("vit_tiny", weights="none", decoder_channels=32, verbose=False)
    checkpoint = tmp_path / "best_phase1.pth"
    torch.save({"format": checkpoints.CHECKPOINT_FORMAT, "format_version": checkpoints.CHECKPOINT_VERSION, "phase": 1, "epoch": 1,
                "model_config": model.config, "working_scale": 0.5, "weights_source": "none",
                "model_state_dict": model.state_dict(), "history": []}, checkpoint)
    folder = tmp_path / "in"
    folder.mkdir()
    image, _ = disks_image((150, 200), [(50, 50), (100, 140)], 20)
    cv2.imwrite(str(folder / "a.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    result = subprocess.run(
        [sys.executable, "-m", "uni_seg.infer", "--checkpoint", str(checkpoint), "--input", str(folder),
         "--output", str(tmp_path / "out"), "--tile-size", "64", "--overlap", "16", "--device", "cpu", "--tta"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        # one thread: two OpenMP threads spin-wait badly on a busy 2-core machine
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 image(s) segmented, 0 failed" in result.stderr and "working scale 0.5" in result.stderr
    out = tmp_path / "out"
    assert cv2.imread(str(out / "a_instances.png"), cv2.IMREAD_UNCHANGED).shape == (150, 200)
    for name in ("a_overlay.jpg", "a_cells.csv", "a_cells.geojson", "coco_instances.json", "summary.csv"):
        assert (out / name).exists(), name


def test_stand_in_hv_follows_the_targets_convention():
    """The equivariant stand-in's HV (what the TTA test un-transforms) is section 2's convention."""
    from uni_seg import targets
    _, inst = disks_image((60, 80), [(20, 20), (35, 55)], 12)
    ours, theirs = exact_hv(inst), targets.hv_maps(inst)
    assert np.abs(ours - theirs).max() < 0.2  # they differ only by the centroid's rounding
    assert theirs[0, 20, 30] > 0.5 and theirs[1, 30, 20] > 0.5  # h grows to the right, v downwards


@pytest.mark.parametrize("kwargs, field", [
    ({"working_scale": -1}, "working_scale"), ({"working_scale": 0}, "working_scale"),
    ({"tile_size": 100}, "tile_size"), ({"batch_size": 0}, "batch_size"), ({"overlap": 224}, "overlap"),
    ({"precision": "int8"}, "precision"), ({"device": "gpu"}, "device"),
])
def test_inference_settings_refuse_a_bad_value_when_made(kwargs, field):
    with pytest.raises(ValueError, match=field):
        predict_mod.InferenceSettings(**kwargs)


def test_inference_settings_travel_as_json():
    s = predict_mod.InferenceSettings(working_scale=0.5, tile_size=128, overlap=32, tta=True, device="cpu")
    assert predict_mod.InferenceSettings.from_dict(json.loads(json.dumps(s.as_dict()))) == s
    with pytest.raises(ValueError, match="did you mean 'tile_size'"):
        predict_mod.InferenceSettings.from_dict({"tile_sise": 64})


def test_folder_exports_are_byte_identical_with_and_without_worker_processes(tmp_path):
    _write_folder(tmp_path / "in")
    settings = predict_mod.InferenceSettings(tile_size=64, overlap=16, batch_size=3)  # batches span images
    for workers in (0, 2):
        infer.run_folder_inference(EquivariantModel(), tmp_path / "in", tmp_path / f"out{workers}", settings,
                                   progress=False, workers=workers)
    names = sorted(p.name for p in (tmp_path / "out0").iterdir() if p.name != "run.json")
    assert names == sorted(p.name for p in (tmp_path / "out2").iterdir() if p.name != "run.json")
    for name in names:
        assert (tmp_path / "out0" / name).read_bytes() == (tmp_path / "out2" / name).read_bytes(), name
    record = json.loads((tmp_path / "out2" / "run.json").read_text())
    assert record["workers"] == 2 and record["peak_rss_mb"] > 0


def test_predict_split_is_the_same_with_and_without_worker_processes(tmp_path):
    split = tmp_path / "processed" / "test"
    split.mkdir(parents=True)
    for i, centres in enumerate([[(20, 20), (40, 60)], [(30, 30)]]):
        image, inst = disks_image((70, 90), centres, 12, seed=i)
        cache_mod.save_processed_atomic(split / f"im{i}.npy", image, inst, (inst > 0).astype(np.int8))
    settings = predict_mod.InferenceSettings(tile_size=64, overlap=16)
    a = infer.predict_split(EquivariantModel(), tmp_path / "processed", "test", settings, workers=0)
    b = infer.predict_split(EquivariantModel(), tmp_path / "processed", "test", settings, workers=2)
    assert [p.stem for p in a] == [p.stem for p in b] == ["im0", "im1"]
    for p, q in zip(a, b):
        assert np.array_equal(p.pred_inst, q.pred_inst) and np.array_equal(p.scores, q.scores)
        assert np.array_equal(p.maps["hv"], q.maps["hv"])


# ------------------------------------------------ issue 21: nothing lost, one writer, exact resume
def _image_file(path: Path, shape=(80, 80), centres=((40, 40),), seed: int = 0) -> Path:
    image, _ = disks_image(shape, list(centres), 12, seed=seed)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


SMALL = predict_mod.InferenceSettings(tile_size=32, overlap=8)


def _cli_with_stand_in(monkeypatch, tmp_path, loaded: list | None = None):
    """`infer.main` with the stand-in model (what would be loaded is recorded in `loaded`)."""
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"stand-in")
    meta = {"working_scale": 0.5, "model_config": {"backbone": "stand-in", "n_classes": 4}}

    def load(path, device):
        if loaded is not None:
            loaded.append(path)
        return EquivariantModel(), meta

    monkeypatch.setattr(infer, "load_inference_model", load)
    monkeypatch.chdir(tmp_path)
    return ["--checkpoint", str(checkpoint), "--tile-size", "32", "--overlap", "8", "--device", "cpu", "--no-progress"]


def test_issue21_case1_output_into_the_input_folder_is_refused_and_nothing_deleted(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "D"
    folder.mkdir()
    files = {name: _image_file(folder / name).read_bytes() for name in ("img0.png", "patient7_instances.png")}
    files["slide_overlay.jpg"] = _image_file(folder / "slide_overlay.jpg").read_bytes()
    (folder / "summary.csv").write_text("the user's own summary\n")
    files["summary.csv"] = (folder / "summary.csv").read_bytes()
    loaded: list = []
    options = _cli_with_stand_in(monkeypatch, tmp_path, loaded)
    with pytest.raises(SystemExit) as exit_info:
        infer.main([*options, "--input", "D", "--output", "D", "--overwrite"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "is the input folder" in err and "Traceback" not in err
    assert not loaded and {p.name: p.read_bytes() for p in folder.iterdir()} == files


def test_overwrite_touches_only_the_files_the_recorded_run_listed(tmp_path):
    """Principle 'a run deletes only what a recorded run wrote', on cases the issue does not
    list: a folder without a record, a record of another tool, and a user's file in the way of
    this run's exports (its name one of them, but not the earlier run's)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    _image_file(inputs / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "b_cells.csv").write_text("the user's table")
    with pytest.raises(FileExistsError, match="no run.json"):
        infer.run_folder_inference(EquivariantModel(), inputs, out, SMALL, progress=False, overwrite=True)
    (out / "run.json").write_text('{"tool": "someone else"}')
    with pytest.raises(FileExistsError, match="not the record of a uni_seg"):
        infer.run_folder_inference(EquivariantModel(), inputs, out, SMALL, progress=False, overwrite=True)
    (out / "run.json").unlink()
    (out / "b_cells.csv").unlink()
    infer.run_folder_inference(EquivariantModel(), inputs, out, SMALL, progress=False)  # exports of a.png
    _image_file(inputs / "b.png", seed=1)
    (out / "b_cells.csv").write_text("the user's table")  # in the way of b.png's exports, not the record's
    with pytest.raises(FileExistsError, match=r"b_cells.csv is in the way"):
        infer.run_folder_inference(EquivariantModel(), inputs, out, SMALL, progress=False, overwrite=True)
    assert (out / "b_cells.csv").read_text() == "the user's table" and (out / "a_cells.csv").exists()


#: A folder run in a second process whose model waits, after its first tiles, until stdin closes.
BLOCKED_RUN = """
import sys
sys.path.insert(0, sys.argv[3])
from stand_ins import EquivariantModel
from uni_seg import infer
from uni_seg import predict as predict_mod
model = EquivariantModel()
settings = predict_mod.InferenceSettings(tile_size=32, overlap=8)
batcher = predict_mod.TileBatcher(model, settings)
def forward(tiles, owners, state={"waited": False}):
    if not state["waited"]:
        state["waited"] = True
        print("running", flush=True)
        sys.stdin.read()  # holds the folder (and its lock) until the test closes the pipe
    return batcher._model_forward(tiles, owners)
infer.run_folder_inference(model, sys.argv[1], sys.argv[2], settings, progress=False, workers=0, forward=forward)
"""


def test_issue21_case2_a_second_run_into_a_busy_folder_is_refused_resume_included(tmp_path):
    import subprocess
    import sys

    from uni_seg.files import FolderInUse

    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for i in range(3):
        _image_file(inputs / f"img{i}.png", seed=i)
    first = subprocess.Popen([sys.executable, "-c", BLOCKED_RUN, str(inputs), str(out), str(Path(__file__).parent)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                                  "OMP_NUM_THREADS": "1"})
    try:
        assert first.stdout.readline().strip() == "running"  # the first holds the lock and has started
        for flags in ({"resume": True}, {"overwrite": True}):
            with pytest.raises(FolderInUse, match=f"in use.*process {first.pid}"):
                infer.run_folder_inference(EquivariantModel(), inputs, out, SMALL, progress=False, workers=0, **flags)
    finally:
        first.stdin.close()
        assert first.wait() == 0
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    coco = json.loads((out / "coco_instances.json").read_text())  # valid: written by one run alone
    assert [im["file_name"] for im in coco["images"]] == ["img0.png", "img1.png", "img2.png"]


#: run.json's fields that belong to one process: when it started and ended, how many images it
#: read back rather than segmented, and its peak memory.
PER_RUN_FIELDS = {"started", "finished", "resumed", "peak_rss_mb"}


def test_issue21_case3_a_killed_and_resumed_run_writes_the_same_bytes_as_an_uninterrupted_one(tmp_path):
    """Also principle 'resume is exact' end to end: every file, run.json but for its per-run fields."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(4):
        _image_file(inputs / f"img{i}.png", (90, 100), [(30, 30), (60, 70)], seed=i)
    deep = cv2.imread(str(inputs / "img0.png")).astype(np.uint32) * 4095 // 255  # read back on resume: its note too
    cv2.imwrite(str(inputs / "img0.png"), deep.astype(np.uint16))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    model = EquivariantModel()
    infer.run_folder_inference(model, inputs, straight, SMALL.replace(batch_size=1), progress=False, workers=0)
    seen: list = []

    def killed_at_the_third_image(tiles, owners):
        seen.extend(key for key, _, _ in owners)
        if len(set(seen)) == 3:
            raise KeyboardInterrupt  # as a kill would: no `except Exception` catches it
        return predict_mod.TileBatcher(model, SMALL)._model_forward(tiles, owners)

    with pytest.raises(KeyboardInterrupt):
        infer.run_folder_inference(model, inputs, resumed, SMALL.replace(batch_size=1), progress=False, workers=0,
                                   forward=killed_at_the_third_image)
    report = infer.run_folder_inference(model, inputs, resumed, SMALL.replace(batch_size=1), progress=False,
                                        workers=0, resume=True)
    assert report.n_ok == 4
    names = sorted(p.name for p in straight.iterdir())
    assert names == sorted(p.name for p in resumed.iterdir())
    for name in names:
        if name not in ("run.json", ".uni_seg.lock"):  # the lock file holds its holder's process id
            assert (straight / name).read_bytes() == (resumed / name).read_bytes(), name
    a, b = (json.loads((folder / "run.json").read_text()) for folder in (straight, resumed))
    assert b["resumed"] == 2 and {k for k in a if a[k] != b.get(k)} <= PER_RUN_FIELDS and "12-bit" in b["notes"]["img0.png"][0]
    assert {k: v for k, v in a.items() if k not in PER_RUN_FIELDS} == {k: v for k, v in b.items() if k not in PER_RUN_FIELDS}


def test_issue21_case4_an_empty_or_truncated_file_among_the_first_images_does_not_stop_the_folder(
        tmp_path, monkeypatch, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a_empty.png").write_bytes(b"")
    (inputs / "b_truncated.jpg").write_bytes(_image_file(tmp_path / "x.jpg").read_bytes()[:300])
    for i in range(2):
        _image_file(inputs / f"img{i}.png", seed=i)
    meta_options = _cli_with_stand_in(monkeypatch, tmp_path)
    infer_meta = {"working_scale": 0.5, "cell_diameter": 12.0, "model_config": {"backbone": "stand-in", "n_classes": 4}}
    monkeypatch.setattr(infer, "load_inference_model", lambda path, device: (EquivariantModel(), infer_meta))
    with pytest.raises(SystemExit) as exit_info:  # 1: two images failed, two segmented
        infer.main([*meta_options, "--input", "in", "--output", "out"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "2 unreadable image(s) not measured" in err
    assert "2 image(s) segmented, 2 failed" in err
    record = json.loads((tmp_path / "out" / "run.json").read_text())  # the record says it too
    assert "2 unreadable image(s)" in record["working_scale_source"] and set(record["failed"]) == {"a_empty.png", "b_truncated.jpg"}


def test_issue21_case5_a_gpu_this_machine_lacks_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    loaded: list = []
    options = _cli_with_stand_in(monkeypatch, tmp_path, loaded)
    (tmp_path / "in").mkdir()
    missing = f"cuda:{torch.cuda.device_count() + 7}"
    for device in ([missing] if torch.cuda.is_available() else ["cuda", missing]):
        with pytest.raises(SystemExit) as exit_info:
            infer.main([*options, "--input", "in", "--output", "out", "--device", device])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err and f"'{device}'" in err, err
    assert not loaded and not (tmp_path / "out").exists()


def test_issue21_case6_bit_depth_and_pages_are_said_in_the_row_and_the_record(tmp_path):
    from PIL import Image

    inputs = tmp_path / "in"
    inputs.mkdir()
    image, inst = disks_image((80, 90), [(40, 45)], 14)
    twelve_bit = (image.astype(np.uint32) * 4095 // 255).astype(np.uint16)
    cv2.imwrite(str(inputs / "deep.png"), cv2.cvtColor(twelve_bit, cv2.COLOR_RGB2BGR))
    pages = [Image.fromarray(image), Image.fromarray(255 - image)]
    pages[0].save(inputs / "stack.tif", save_all=True, append_images=pages[1:])
    got, notes = data.read_image_with_notes(inputs / "deep.png")
    assert abs(int(got.max()) - int(image.max())) <= 1 and any("12-bit" in n for n in notes)  # not divided by 257
    np.testing.assert_array_equal(data.read_image(inputs / "stack.tif"), image)  # the first page
    report = infer.run_folder_inference(EquivariantModel(), inputs, tmp_path / "out", SMALL, progress=False, workers=0)
    rows = {r["image"]: r for r in report.rows}
    assert "12-bit" in rows["deep.png"]["notes"] and "2 pages" in rows["stack.tif"]["notes"]
    record = json.loads(report.record_path.read_text())
    assert "12-bit" in record["notes"]["deep.png"][0] and "2 pages" in record["notes"]["stack.tif"][0]
    with open(report.summary_path, newline="") as handle:
        assert "2 pages" in {r["image"]: r for r in csv.DictReader(handle)}["stack.tif"]["notes"]


def test_an_exif_orientation_is_applied_and_said(tmp_path):
    """Principle 'inputs whose meaning we would guess get a note', on a case the issue does not
    list among its numbered ones: a JPEG whose EXIF says "turned 90 degrees"."""
    from PIL import Image

    image = np.zeros((40, 60, 3), np.uint8)
    image[:10, :20] = 255  # a white patch at the stored top left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: shown rotated 90 degrees clockwise
    Image.fromarray(image).save(tmp_path / "a.jpg", exif=exif, quality=95)
    got, notes = data.read_image_with_notes(tmp_path / "a.jpg")
    assert got.shape == (60, 40, 3) and got[:20, -10:].mean() > 200 and got[-20:, :10].mean() < 50
    assert any(n.startswith("orientation: EXIF orientation 6 applied") for n in notes)
    upright, _ = data.read_image_with_notes(tmp_path / "a.jpg", orient=False)  # a training image keeps its mask's pixels
    assert upright.shape == (40, 60, 3)


def test_issue21_case9_an_empty_input_folder_exits_1_with_a_failed_record(tmp_path, monkeypatch, capsys):
    (tmp_path / "in").mkdir()
    options = _cli_with_stand_in(monkeypatch, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        infer.main([*options, "--input", "in", "--output", "out", "--working-scale", "1"])
    assert exit_info.value.code == 1
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["status"] == "failed" and "no images" in record["error"]
    capsys.readouterr()
    for value in ("inf", "1e-9", "nan"):
        with pytest.raises(SystemExit) as exit_info:
            infer.main([*options, "--input", "in", "--output", "out2", "--cell-diameter", value])
        assert exit_info.value.code == 2 and "--cell-diameter" in capsys.readouterr().err


def test_bad_output_paths_and_too_many_workers_are_said_before_any_work(tmp_path, monkeypatch, capsys):
    """Principle 'bad options are one line, exit 2, before any work', on cases the issue does not
    list: --output naming a file; --workers beyond the usable CPUs is capped and said."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    _image_file(inputs / "a.png")
    (tmp_path / "taken.txt").write_text("a file")
    loaded: list = []
    options = _cli_with_stand_in(monkeypatch, tmp_path, loaded)
    with pytest.raises(SystemExit) as exit_info:
        infer.main([*options, "--input", "in", "--output", "taken.txt"])
    assert exit_info.value.code == 2 and "is a file, not a folder" in capsys.readouterr().err and not loaded
    infer.main([*options, "--input", "in", "--output", "out", "--workers", "999", "--working-scale", "1"])
    err = capsys.readouterr().err
    assert f"{procs_mod.usable_cpus()} used" in err
    assert json.loads((tmp_path / "out" / "run.json").read_text())["workers"] == procs_mod.usable_cpus()


# -------------------------------------------------------------------------- 1. export names collide
# Issue 16, faults met trying the project as a new user: nothing lost, nothing silent, every bad option or file named in one line before any work.
def _summary(folder: Path) -> list[dict[str, str]]:
    with open(folder / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_inputs_that_share_a_name_each_get_their_own_exports(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _image_file(inputs / "good.png", (300, 400), [(60, 60), (150, 200)])
    _image_file(inputs / "good.jpg", (200, 200), [(50, 50)], seed=1)
    _image_file(inputs / "good_png.png", (200, 200), [(100, 100)], seed=2)
    report = infer.run_folder_inference(EquivariantModel(), inputs, tmp_path / "out", SMALL, progress=False)
    names = {r["image"]: r["name"] for r in report.rows}
    assert len(set(names.values())) == 3 and report.n_ok == 3
    label = cv2.imread(str(tmp_path / "out" / f"{names['good.png']}_instances.png"), cv2.IMREAD_UNCHANGED)
    assert label.shape == (300, 400)  # good.png's own exports, not good_png.png's
    assert outputs_mod.output_names([Path("A.png"), Path("a.jpg")]) == ["A_png", "a_jpg"]  # case-insensitive file systems
    assert {r["name"] for r in _summary(tmp_path / "out")} == set(names.values())


# --------------------------------------------------------------- 2. one run per folder, never mixed
def test_a_non_empty_output_folder_is_refused_unless_overwrite_or_resume(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _image_file(inputs / "a.png", (80, 80), [(40, 40)])
    out = tmp_path / "out"
    infer.run_folder_inference(EquivariantModel(), inputs, out, SMALL, progress=False)
    with pytest.raises(FileExistsError, match="--overwrite.*--resume"):
        infer.run_folder_inference(EquivariantModel(), inputs, out, SMALL, progress=False)
    (out / "mine.txt").write_text("a file of the user's")
    report = infer.run_folder_inference(EquivariantModel(), inputs, out, SMALL, progress=False, overwrite=True)
    assert report.n_ok == 1 and (out / "mine.txt").exists()  # only our outputs are replaced
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_a_killed_run_leaves_no_earlier_summary_and_resume_finishes_it(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(3):
        _image_file(inputs / f"img{i}.png", (80, 80), [(40, 40)], seed=i)
    out = tmp_path / "out"
    infer.run_folder_inference(EquivariantModel(), inputs, out, SMALL, progress=False, workers=0)
    model, seen = EquivariantModel(), []

    def killed_at_the_second_image(tiles, owners):
        seen.extend(key for key, _, _ in owners)
        if len(set(seen)) == 2:
            raise KeyboardInterrupt  # what Ctrl-C or a kill does: no `except Exception` catches it
        return predict_mod.TileBatcher(model, SMALL)._model_forward(tiles, owners)

    with pytest.raises(KeyboardInterrupt):
        infer.run_folder_inference(model, inputs, out, SMALL.replace(batch_size=1), progress=False, overwrite=True,
                                   workers=0, forward=killed_at_the_second_image)
    assert not (out / "summary.csv").exists() and not (out / "coco_instances.json").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    with pytest.raises(ValueError, match="settings"):  # another run's settings: not mixed
        infer.run_folder_inference(model, inputs, out, SMALL.replace(tile_size=48), progress=False, resume=True,
                                   workers=0)
    report = infer.run_folder_inference(model, inputs, out, SMALL.replace(batch_size=1), progress=False, resume=True,
                                        workers=0)
    assert report.n_ok == 3 and json.loads((out / "run.json").read_text())["resumed"] == 1  # img0: read back, not redone
    coco = json.loads((out / "coco_instances.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == ["img0.png", "img1.png", "img2.png"]


# --------------------------------------------------------- 3. every option checked before any image
@pytest.mark.parametrize("option, message", [
    (["--working-scale", "-1"], "--working-scale"), (["--working-scale", "0"], "--working-scale"),
    (["--tile-size", "100"], "--tile-size"), (["--batch-size", "0"], "--batch-size"),
    (["--overlap", "300"], "--overlap"), (["--limit", "0"], "--limit"),
])
def test_cli_refuses_a_bad_option_before_loading_anything(tmp_path, monkeypatch, capsys, option, message):
    monkeypatch.setattr(infer, "load_inference_model", lambda *a: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as exit_info:
        infer.main(["--checkpoint", "x.pth", "--input", str(tmp_path), "--output", str(tmp_path / "o"), *option])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


# ------------------------------------------------------- 5. links, loops, folders named like images
def test_broken_links_loops_and_folders_named_like_images_are_reported(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _image_file(inputs / "real.png", (80, 80), [(40, 40)])
    (inputs / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (inputs / "loop.png").symlink_to(inputs / "loop.png")
    (inputs / "folder.jpg").mkdir()
    (inputs / "notes.txt").write_text("not an image")
    report = infer.run_folder_inference(EquivariantModel(), inputs, tmp_path / "out", SMALL, progress=False)
    rows = {r["image"]: r for r in _summary(tmp_path / "out")}
    assert rows["real.png"]["status"] == "ok" and report.n_ok == 1
    assert rows["dangling.png"]["status"] == "skipped" and "broken symbolic link" in rows["dangling.png"]["error"]
    assert rows["loop.png"]["status"] == "skipped" and "symbolic link loop" in rows["loop.png"]["error"]
    assert rows["folder.jpg"]["status"] == "skipped" and "folder" in rows["folder.jpg"]["error"]
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert len(record["skipped"]) == 3 and record["not_images"] == 1


# ------------------------------------------------ 13. a rejected checkpoint, one line, no traceback
def test_the_cli_reports_a_rejected_checkpoint_in_one_line_without_a_traceback(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "model.pth").write_bytes(b"not a checkpoint")
    result = subprocess.run([sys.executable, "-m", "uni_seg.infer", "--checkpoint", str(tmp_path / "model.pth"),
                             "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--device", "cpu"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and "model.pth" in error_lines[0]
