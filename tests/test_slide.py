"""Whole-slide smears (uni_seg.slide): a synthetic tiled pyramid written here by tifffile, a
pointwise stand-in model (every map pixel depends only on its image pixel, so a region and the
whole image see the same maps), and the slide's cells compared with whole-image inference."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from uni_seg import predict as predict_mod
from uni_seg import export, infer, slide
from uni_seg.files import LOCK_NAME, FolderInUse
from uni_seg.postproc import PostprocParams, drop_edge_slivers
from uni_seg.synthetic import render_synthetic_smear

from stand_ins import DarknessModel

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("tiffslide")


def _canonical(inst: np.ndarray) -> np.ndarray:
    """Labels renumbered by first appearance (row-major): equal partitions give equal arrays."""
    flat = inst.ravel()
    ids, first = np.unique(flat, return_index=True)
    order = ids[np.argsort(first)]
    order = order[order != 0]
    lut = np.zeros(int(flat.max(initial=0)) + 1, np.int64)
    lut[order] = np.arange(1, order.size + 1)
    return lut[inst]


def write_slide(path, height: int = 384, width: int = 512, seed: int = 0, tile: int = 128) -> np.ndarray:
    """A synthetic smear saved as a tiled pyramidal RGB TIFF (levels 1, 1/2, 1/4); returns level 0."""
    smear = render_synthetic_smear(np.random.default_rng(seed), height, width, cell_diameter=24, fill_fraction=0.15,
                                   max_overlap=0.0, n_wbc=(1, 2), n_platelets=(2, 4))
    image = smear.image
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        tif.write(image, tile=(tile, tile), photometric="rgb", subifds=2, compression="zlib")
        for k in (1, 2):
            tif.write(image[::2**k, ::2**k], tile=(tile, tile), photometric="rgb", subfiletype=1, compression="zlib")
    return image


def test_pick_level_is_the_nearest_on_a_log_scale():
    assert slide.pick_level([1, 4, 16], 1.0) == (0, 1.0)
    assert slide.pick_level([1, 4, 16], 0.25) == (1, 1.0)
    assert slide.pick_level([1, 2, 4], 0.3) == (2, pytest.approx(1.2))
    assert slide.pick_level([1, 2, 4], 2.0) == (0, 2.0)


def test_regions_tile_the_slide_once_with_margins():
    regions = slide.slide_regions(300, 500, 128, 40)
    cover = np.zeros((300, 500), np.int32)
    for r in regions:
        y0, x0, y1, x1 = r.core
        cover[y0:y1, x0:x1] += 1
        wy0, wx0, wy1, wx1 = r.window
        assert wy0 == max(0, y0 - 40) and wx1 == min(500, x1 + 40)
    assert (cover == 1).all() and len(regions) == 3 * 4
    with pytest.raises(ValueError, match="multiple of 16"):
        slide.slide_regions(300, 500, 100, 10)


def test_slide_rle_equals_the_full_mask_encoding():
    rng = np.random.default_rng(1)
    for _ in range(20):
        h, w = rng.integers(1, 9, 2)
        mask = rng.random((h, w)) < 0.6
        top, left = rng.integers(0, 5, 2)
        full = np.zeros((16, 12), bool)
        full[top:top + h, left:left + w] = mask
        assert slide.slide_rle(mask, int(top), int(left), 16, 12) == export.rle_encode(full)["counts"]
    column = np.ones((16, 1), bool)  # a full-height column continues into the next one
    full = np.zeros((16, 12), bool)
    full[:, 3:5] = True
    assert slide.slide_rle(np.ones((16, 2), bool), 0, 3, 16, 12) == export.rle_encode(full)["counts"]
    assert slide.slide_rle(column, 0, 0, 16, 1) == export.rle_encode(column)["counts"]


def test_is_slide_tells_pyramids_from_plain_images(tmp_path):
    write_slide(tmp_path / "pyramid.tif", 128, 128, tile=64)
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((32, 32, 3), np.uint8))
    (tmp_path / "scan.svs").write_bytes(b"not looked at")
    assert slide.is_slide(tmp_path / "pyramid.tif") and slide.is_slide(tmp_path / "scan.svs")
    assert not slide.is_slide(tmp_path / "flat.tif") and not slide.is_slide(tmp_path)


def test_slide_cells_equal_whole_image_inference_none_cut_or_doubled(tmp_path):
    image = write_slide(tmp_path / "smear.tif")
    settings = predict_mod.InferenceSettings(tile_size=64, overlap=16, batch_size=16, device="cpu", precision="fp32")
    model = DarknessModel()
    whole = predict_mod.segment_image(model, image, settings)
    report = slide.run_slide_inference(model, tmp_path / "smear.tif", tmp_path / "out", settings, region_size=128,
                                       margin=48, progress=False)
    out = tmp_path / "out"
    labels = tifffile.imread(out / "smear_instances.tif")
    assert labels.shape == image.shape[:2] and labels.dtype == np.uint32
    # the same cells as one pass over the whole image: none cut at a region border, none doubled
    np.testing.assert_array_equal(_canonical(labels), _canonical(whole.inst))
    assert report.cells == whole.n_cells == len(np.unique(labels)) - 1 and report.regions == 3 * 4
    # the test means something: cells straddle the region borders (every 128 px)
    straddling = sum(np.intersect1d(whole.inst[:, x - 1], whole.inst[:, x]).size - 1 for x in (128, 256, 384))
    assert straddling >= 3
    with open(out / "smear_cells.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["id"]) for r in rows] == list(range(1, report.cells + 1))
    for row in rows[:: max(1, len(rows) // 10)]:  # centroids in slide pixels
        cell = labels == int(row["id"])
        ys, xs = np.nonzero(cell)
        assert float(row["centroid_x"]) == pytest.approx(xs.mean(), abs=1e-3)
        assert float(row["centroid_y"]) == pytest.approx(ys.mean(), abs=1e-3)
        assert int(row["area"]) == cell.sum()
    geo = json.loads((out / "smear_cells.geojson").read_text())
    assert len(geo["features"]) == report.cells
    coco = json.loads((out / "smear_coco.json").read_text())
    assert coco["images"][0]["width"] == image.shape[1] and len(coco["annotations"]) == report.cells
    for ann in coco["annotations"][:: max(1, report.cells // 10)]:
        np.testing.assert_array_equal(export.rle_decode(ann["segmentation"]), labels == ann["id"])
    with tifffile.TiffFile(out / "smear_instances.tif") as tif:  # a tiled pyramid: level 1 every 2nd pixel
        levels = tif.series[0].levels
        assert len(levels) >= 2 and tif.pages[0].is_tiled
        np.testing.assert_array_equal(levels[1].asarray(), labels[::2, ::2])
    record = json.loads((out / "smear_slide.json").read_text())
    assert record["status"] == "complete" and record["cells"] == report.cells and record["level"] == 0
    assert len(record["stain_reference"]) == 2  # the stain rules measured every region against the same cells
    assert [p.name for p in out.glob(".*")] == [LOCK_NAME]  # no temporaries, no tile store left behind
    # the result does not depend on the region size
    slide.run_slide_inference(model, tmp_path / "smear.tif", tmp_path / "out2", settings, region_size=192, margin=48,
                              progress=False)
    np.testing.assert_array_equal(_canonical(tifffile.imread(tmp_path / "out2" / "smear_instances.tif")),
                                  _canonical(labels))


def test_slide_outputs_are_replaced_only_when_a_recorded_run_wrote_them(tmp_path):
    write_slide(tmp_path / "s.tif", 128, 128, tile=64)
    settings = predict_mod.InferenceSettings(tile_size=64, overlap=16, device="cpu")
    out = tmp_path / "out"
    out.mkdir()
    (out / "s_cells.csv").write_text("mine")
    for overwrite in (False, True):  # no record of ours lists it: never replaced, --overwrite or not
        with pytest.raises(FileExistsError, match="s_cells.csv"):
            slide.run_slide_inference(DarknessModel(), tmp_path / "s.tif", out, settings, region_size=64,
                                      overwrite=overwrite, progress=False)
        assert (out / "s_cells.csv").read_text() == "mine"
    (out / "s_cells.csv").unlink()
    (out / "other.txt").write_text("not the slide's")
    slide.run_slide_inference(DarknessModel(), tmp_path / "s.tif", out, settings, region_size=64, progress=False)
    record = json.loads((out / "s_slide.json").read_text())
    assert {"s_cells.csv", "s_instances.tif", "s_slide.json"} <= set(record["files"])
    with pytest.raises(FileExistsError, match="--overwrite"):  # the earlier run's: only with --overwrite
        slide.run_slide_inference(DarknessModel(), tmp_path / "s.tif", out, settings, region_size=64, progress=False)
    (out / "s_cells.csv").write_text("stale")
    slide.run_slide_inference(DarknessModel(), tmp_path / "s.tif", out, settings, region_size=64,
                              overwrite=True, progress=False)
    assert (out / "other.txt").read_text() == "not the slide's"
    assert (out / "s_cells.csv").read_text().startswith("id,")
    (out / "s_slide.json").write_text('{"tool": "someone else"}')  # a record not ours claims nothing
    with pytest.raises(FileExistsError, match="not the record"):
        slide.run_slide_inference(DarknessModel(), tmp_path / "s.tif", out, settings, region_size=64,
                                  overwrite=True, progress=False)


def test_a_slide_run_holds_the_folder_lock_and_refuses_an_output_holding_the_slide(tmp_path):
    write_slide(tmp_path / "s.tif", 128, 128, tile=64)
    settings = predict_mod.InferenceSettings(tile_size=64, overlap=16, device="cpu")
    with pytest.raises(ValueError, match="holds the input"):  # the slide's own folder
        slide.run_slide_inference(DarknessModel(), tmp_path / "s.tif", tmp_path, settings, region_size=64,
                                  progress=False)
    assert not (tmp_path / "s_slide.json").exists()
    holder = subprocess.Popen(  # another writer of the folder (a plain run): holds its lock until told
        [sys.executable, "-c", "import sys\nfrom uni_seg.files import folder_lock\nwith folder_lock(sys.argv[1]):\n"
         "    print('locked', flush=True)\n    sys.stdin.read()", str(tmp_path / "out")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"  # an event, not a clock
        with pytest.raises(FolderInUse, match=rf"in use.*process {holder.pid}"):
            slide.run_slide_inference(DarknessModel(), tmp_path / "s.tif", tmp_path / "out", settings, region_size=64,
                                      progress=False)
        assert not (tmp_path / "out" / "s_slide.json").exists()
    finally:
        holder.stdin.close()
        assert holder.wait() == 0
    slide.run_slide_inference(DarknessModel(), tmp_path / "s.tif", tmp_path / "out", settings, region_size=64,
                              progress=False)


def test_uni_seg_infer_routes_a_slide_and_refuses_shards_of_it(tmp_path, monkeypatch, capsys):
    write_slide(tmp_path / "smear.tif", 192, 256, tile=64)
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"stand-in")
    meta = {"working_scale": 1.0, "cell_diameter": 24.0, "model_config": {"backbone": "stand-in", "n_classes": 4}}
    monkeypatch.setattr(infer, "load_inference_model", lambda path, device: (DarknessModel(), meta))
    monkeypatch.chdir(tmp_path)
    options = ["--checkpoint", str(checkpoint), "--input", "smear.tif", "--tile-size", "64", "--overlap", "16",
               "--device", "cpu", "--precision", "fp32", "--no-progress"]
    infer.main([*options, "--output", "out"])
    record = json.loads((tmp_path / "out" / "smear_slide.json").read_text())
    assert record["status"] == "complete" and record["margin"] == 48  # two cell diameters of the checkpoint
    assert "regions" in capsys.readouterr().err and (tmp_path / "out" / "smear_instances.tif").exists()
    assert not (tmp_path / "out" / "summary.csv").exists()  # a slide is not a folder run
    with pytest.raises(SystemExit) as exit_info:
        infer.main([*options, "--output", "out2", "--shard", "0/2"])
    assert exit_info.value.code == 2 and "--shard splits a folder" in capsys.readouterr().err


def test_a_coarser_level_is_read_for_a_smaller_working_scale_and_geojson_is_in_level_0_pixels(tmp_path):
    image = write_slide(tmp_path / "smear.tif")
    settings = predict_mod.InferenceSettings(working_scale=0.5, tile_size=64, overlap=16, device="cpu", precision="fp32")
    report = slide.run_slide_inference(DarknessModel(), tmp_path / "smear.tif", tmp_path / "out", settings,
                                       region_size=64, margin=24, progress=False)
    assert (report.level, report.downsample) == (1, 2.0)
    labels = tifffile.imread(tmp_path / "out" / "smear_instances.tif")
    assert labels.shape == (image.shape[0] // 2, image.shape[1] // 2)  # the pixels of level 1
    geo = json.loads((tmp_path / "out" / "smear_cells.geojson").read_text())
    for feature in geo["features"][:5]:
        ys, xs = np.nonzero(labels == feature["properties"]["measurements"]["cell_id"])
        rings = feature["geometry"]["coordinates"]
        points = np.concatenate([np.asarray(r) for r in (rings if feature["geometry"]["type"] == "Polygon"
                                                         else [r for piece in rings for r in piece])])
        # outlines run 0.25 px inside the level-1 pixel edges: x 2 in level-0 pixels
        assert points[:, 0].min() == 2 * (xs.min() + 0.25) and points[:, 0].max() == 2 * (xs.max() + 0.75)
        assert points[:, 1].min() == 2 * (ys.min() + 0.25) and points[:, 1].max() == 2 * (ys.max() + 0.75)


def test_regions_know_which_window_sides_are_the_slide_edge():
    regions = {(r.row, r.col): r for r in slide.slide_regions(300, 500, 128, 40)}
    assert regions[0, 0].frame_sides == (True, False, True, False)  # top, bottom, left, right
    assert regions[1, 1].frame_sides == (False, False, False, False)
    assert regions[2, 3].frame_sides == (False, True, False, True)
    assert slide.slide_regions(100, 100, 128, 40)[0].frame_sides == (True, True, True, True)


def test_slivers_on_the_slide_edge_are_dropped_and_cells_at_region_seams_are_not(tmp_path):
    """With the edge-sliver rule on, the slide's cells are those of one pass over the whole
    image (slivers cut off by the slide's edge dropped), and a region's window keeps the cells
    cut by its inner sides, which are whole in the slide."""
    image = write_slide(tmp_path / "smear.tif")
    settings = predict_mod.InferenceSettings(tile_size=64, overlap=16, batch_size=16, device="cpu", precision="fp32")
    model = DarknessModel()
    rule = PostprocParams(min_edge_cell_area=200)  # about half the synthetic smear's red cell (24 px across)
    whole = predict_mod.segment_image(model, image, settings, rule)
    assert whole.n_cells < predict_mod.segment_image(model, image, settings).n_cells  # the rule dropped slivers
    slide.run_slide_inference(model, tmp_path / "smear.tif", tmp_path / "out", settings, rule, region_size=128,
                              margin=48, progress=False)
    labels = tifffile.imread(tmp_path / "out" / "smear_instances.tif")
    np.testing.assert_array_equal(_canonical(labels), _canonical(whole.inst))
    # a window without margin, cut from the slide's top-left corner: its bottom and right sides are seams
    region = slide.Region(0, 0, (0, 0, 128, 128), (0, 0, 128, 128), (True, False, True, False))
    window = image[:128, :128]
    local, *_ = slide.region_cells(model, window, region, settings, rule, 1)
    everything = predict_mod.segment_image(model, window, settings).inst
    cut_by_seams = np.setdiff1d(np.r_[everything[-1], everything[:, -1]], [0])
    as_if_all_frame = drop_edge_slivers(everything, rule.min_edge_cell_area)
    assert any((as_if_all_frame[everything == cell] == 0).all() for cell in cut_by_seams)  # the test means something
    for cell in cut_by_seams:
        assert (local[everything == cell] > 0).all(), f"cell {cell} on a seam was dropped"


def test_a_cell_centred_on_a_core_edge_is_kept_by_exactly_one_region():
    top = slide.Region(0, 0, (100, 0, 125, 40), (100, 0, 140, 40))  # core rows [100, 125)
    bottom = slide.Region(1, 0, (125, 0, 160, 40), (93, 0, 133, 40))  # core rows [125, 160), window from 93
    seen_from_top = np.zeros((40, 40), np.int32)
    seen_from_top[10:20, 15:25] = 1  # slide rows 110..119: centroid row 114.5
    seen_from_top[20:31, 10:20] = 2  # slide rows 120..130: centroid row 125.0, on the edge of the two cores
    seen_from_bottom = np.zeros((40, 40), np.int32)
    seen_from_bottom[7:] = seen_from_top[:33]  # the same slide pixels from a window 7 rows higher
    assert slide.owned_cells(seen_from_top, top).tolist() == [1]
    assert slide.owned_cells(seen_from_bottom, bottom).tolist() == [2]  # row 125.0 is the lower core's only


def _slide_checkpoint(tmp_path, monkeypatch, **meta) -> Path:
    """A checkpoint file that loads as the pointwise stand-in with `meta` (what the CLI checks exists)."""
    meta = {"working_scale": 0.5, "cell_diameter": 12.0, "checkpoint_id": "stand-in-1",
            "model_config": {"backbone": "stand-in", "n_classes": 4}, **meta}
    monkeypatch.setattr(infer, "load_inference_model", lambda path, device: (DarknessModel(), dict(meta, path=Path(path))))
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"stand-in")
    return checkpoint


def test_segmenter_segment_slide_writes_the_files_of_uni_seg_infer_byte_for_byte(tmp_path, monkeypatch):
    from uni_seg.segmenter import Segmenter

    write_slide(tmp_path / "smear.tif")
    _slide_checkpoint(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    fast = ["--tile-size", "64", "--overlap", "16", "--device", "cpu", "--precision", "fp32"]
    infer.main(["--checkpoint", "model.pth", "--input", "smear.tif", "--output", "cli", *fast, "--no-progress"])
    seg = Segmenter.from_checkpoint("model.pth", device="cpu", precision="fp32", tile_size=64, overlap=16)
    report = seg.segment_slide("smear.tif", "python", progress=False)
    # the checkpoint's scale 0.5 without being told: level 1 (downsample 2) of the pyramid is read
    assert (report.level, report.downsample, report.size) == (1, 2.0, (192, 256)) and report.cells >= 10
    for suffix in slide.SLIDE_EXPORT_SUFFIXES:
        assert (tmp_path / "python" / f"smear{suffix}").read_bytes() == (tmp_path / "cli" / f"smear{suffix}").read_bytes(), suffix
    records = [json.loads((tmp_path / where / "smear_slide.json").read_text()) for where in ("cli", "python")]
    for record in records:  # the run's own time and memory differ; everything else is the same
        assert record.pop("seconds") >= 0 and record.pop("peak_rss_mb") > 0
    assert records[0] == records[1]
    assert records[1]["margin"] == 24 and "the checkpoint's" in records[1]["working_scale_source"]
    assert records[1]["checkpoint"] == {"path": str((tmp_path / "model.pth").resolve()), "checkpoint_id": "stand-in-1"}


def test_segmenter_refuses_to_hold_a_slide_in_memory_and_names_segment_slide(tmp_path, monkeypatch):
    from uni_seg.segmenter import Segmenter

    write_slide(tmp_path / "smear.tif", 128, 128, tile=64)
    tifffile.imwrite(tmp_path / "field.tif", np.full((64, 64, 3), 230, np.uint8))  # one level: a plain image
    _slide_checkpoint(tmp_path, monkeypatch)
    seg = Segmenter.from_checkpoint(tmp_path / "model.pth", device="cpu", precision="fp32", tile_size=64, overlap=16)
    loads = []
    with monkeypatch.context() as patched:
        patched.setattr("uni_seg.segmenter.load_any", lambda *a: loads.append(a))  # nothing may be read
        for call in (lambda: seg(tmp_path / "smear.tif"), lambda: seg(str(tmp_path / "smear.tif")),
                     lambda: seg([tmp_path / "field.tif", tmp_path / "smear.tif"])):
            with pytest.raises(ValueError) as refused:
                call()
            message = str(refused.value)
            assert "\n" not in message and str(tmp_path / "smear.tif") in message
            assert "whole-slide image" in message and "seg.segment_slide(" in message
        with pytest.raises(ValueError, match=r"not a folder: call seg\.segment_slide\("):
            seg.segment_folder(tmp_path / "smear.tif", tmp_path / "out")
    assert loads == [] and not (tmp_path / "out").exists()
    assert seg(tmp_path / "field.tif").labels.shape == (64, 64)  # a one-level TIFF is still an image to hold
