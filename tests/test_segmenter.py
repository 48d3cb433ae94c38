"""§8's front door: `Segmenter` (settings from the checkpoint, scale, post-processing, classes),
its result and exports, the CLI as a thin layer over it, and the public API's doctests."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import uni_seg
from stand_ins import EquivariantModel, disks_image
from uni_seg import infer
from uni_seg.checkpoints import store_postproc
from uni_seg.export import write_csv
from uni_seg.postproc import PostprocParams, save_postproc_params
from uni_seg.segmenter import Segmenter, untrained_checkpoint

FAST = dict(device="cpu", precision="fp32", tile_size=32, overlap=8)


class CountingModel(EquivariantModel):
    """The equivariant stand-in, counting the tiles it is given."""

    def __init__(self):
        super().__init__()
        self.tiles = 0

    def forward(self, x):
        self.tiles += x.shape[0]
        return super().forward(x)


def _stand_in(monkeypatch, model=None, **meta):
    """Checkpoints load as the equivariant stand-in with `meta` (a real file need not exist)."""
    meta = {"working_scale": 1.0, "model_config": {"backbone": "stand-in", "n_classes": 4}, **meta}
    model = model or EquivariantModel()
    monkeypatch.setattr(infer, "load_inference_model", lambda path, device: (model, dict(meta, path=path)))
    return model


def _folder(folder: Path) -> list[Path]:
    folder.mkdir()
    paths = []
    for k, centres in enumerate([[(20, 20), (50, 70), (80, 30)], [(30, 90), (70, 40)]]):
        image, _ = disks_image((100, 120), centres, 12, seed=k)
        paths.append(folder / f"img{k}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return paths


def _same_as_cli(results, out: Path) -> int:
    """Assert each result equals the CLI's files for its image; returns the cells compared."""
    cells = 0
    for result in results:
        labels = cv2.imread(str(out / f"{result.name}_instances.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(result.labels, labels)
        assert result.labels.dtype == np.int32
        csv = write_csv(out.parent / "python_cells.csv", result.table()).read_bytes()
        assert csv == (out / f"{result.name}_cells.csv").read_bytes()
        assert result.to_geojson(as_text=True) == (out / f"{result.name}_cells.geojson").read_text()
        cells += result.n_cells
    return cells


def test_python_call_equals_uni_seg_infer_byte_for_byte(tmp_path, monkeypatch):
    paths = _folder(tmp_path / "in")
    _stand_in(monkeypatch, working_scale=0.5)
    monkeypatch.chdir(tmp_path)
    Path("model.pth").write_bytes(b"stand-in")  # the CLI checks that the file exists
    infer.main(["--checkpoint", "model.pth", "--input", "in", "--output", "out", "--tile-size", "32", "--overlap", "8",
                "--device", "cpu", "--precision", "fp32", "--no-progress", "--workers", "0"])
    seg = Segmenter.from_checkpoint("model.pth", cell_diameter="auto", **FAST)
    results = seg(paths)
    assert [r.name for r in results] == ["img0", "img1"] and {r.working_scale for r in results} == {0.5}
    assert _same_as_cli(results, tmp_path / "out") == 5
    # one image given as an array: the same cells (its GeoJSON ids need the file's name)
    image = cv2.cvtColor(cv2.imread(str(paths[0])), cv2.COLOR_BGR2RGB)
    single = seg(image)
    np.testing.assert_array_equal(single.labels, results[0].labels)
    single.name = "img0"
    _same_as_cli([single], tmp_path / "out")
    # write(): the folder run's files, byte for byte
    results[1].write(tmp_path / "written", overlay="none")
    for suffix in ("_instances.png", "_cells.csv", "_cells.geojson"):
        assert (tmp_path / "written" / f"img1{suffix}").read_bytes() == (tmp_path / "out" / f"img1{suffix}").read_bytes()


def test_python_call_equals_the_cli_with_a_real_checkpoint_and_worker_processes(tmp_path, monkeypatch):
    paths = _folder(tmp_path / "in")
    checkpoint = untrained_checkpoint(tmp_path / "tiny.pth", working_scale=0.5)
    monkeypatch.chdir(tmp_path)
    loose = tmp_path / "loose.json"  # an untrained model's maps are flat: a low threshold makes cells
    save_postproc_params(loose, PostprocParams(fg_threshold=0.45, min_area=5))
    infer.main(["--checkpoint", str(checkpoint), "--input", "in", "--output", "out", "--tile-size", "64",
                "--overlap", "16", "--device", "cpu", "--precision", "fp32", "--no-progress", "--workers", "1",
                "--postproc", str(loose)])
    seg = Segmenter.from_checkpoint(checkpoint, cell_diameter="auto", postproc=loose, workers=1, device="cpu",
                                    precision="fp32", tile_size=64, overlap=16)
    assert _same_as_cli(seg(iter(paths)), tmp_path / "out") >= 0


def test_a_checkpoint_trained_at_half_scale_segments_at_half_scale_without_being_told(monkeypatch):
    model = _stand_in(monkeypatch, CountingModel(), working_scale=0.5)
    image, _ = disks_image((128, 128), [(30, 30), (90, 90)], 14)
    seg = Segmenter.from_checkpoint("trained_at_half.pth", device="cpu", precision="fp32", tile_size=64, overlap=0)
    assert seg.working_scale == 0.5
    result = seg(image)
    assert result.working_scale == 0.5 and result.labels.shape == (128, 128) and model.tiles == 1  # 64 x 64: one tile
    model.tiles = 0
    Segmenter.from_checkpoint("x.pth", device="cpu", tile_size=64, overlap=0, working_scale=1.0)(image)
    assert model.tiles == 4  # told otherwise: the image at full size, four tiles
    assert result.n_cells == 2


def test_cell_diameter_auto_rescales_an_image_whose_cells_are_twice_as_large(smear, monkeypatch):
    _stand_in(monkeypatch, working_scale=0.5, cell_diameter=20.0)
    seg = Segmenter.from_checkpoint("x.pth", cell_diameter="auto", **FAST)
    usual, large = seg(smear(40, shape=(240, 320))), seg(smear(80, shape=(480, 640)))
    assert usual.working_scale == pytest.approx(0.5, rel=0.1)
    assert large.working_scale == pytest.approx(usual.working_scale / 2, rel=0.1)
    assert Segmenter.from_checkpoint("x.pth", cell_diameter=80, **FAST).scale_for([])[0] == pytest.approx(0.25)
    assert Segmenter.from_checkpoint("x.pth", **FAST).scale_for([])[0] == 0.5  # not asked: the checkpoint's


@pytest.mark.parametrize("keyword, value, message", [
    ("cell_diameter", "big", "cell_diameter='big'"), ("cell_diameter", 0, "cell_diameter=0"),
    ("tile_size", 100, "tile_size=100"), ("working_scale", 9, "working_scale=9"), ("workers", -1, "workers=-1"),
    ("scheme", "bbbc041-stages", "has 7 classes but the model predicts 4"), ("scheme", "malaria", "malaria"), ("postproc", {"fg_treshold": 0.3}, "fg_threshold"),
    ("device", "gpu", "device='gpu'"),
])
def test_every_setting_is_checked_when_given(monkeypatch, keyword, value, message):
    _stand_in(monkeypatch)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Segmenter.from_checkpoint("x.pth", **{keyword: value})
    with pytest.raises(TypeError):
        Segmenter.from_checkpoint("x.pth", tile=64)


def test_post_processing_comes_from_the_checkpoint_then_the_side_file_then_the_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = untrained_checkpoint(tmp_path / "tiny.pth")
    side = tmp_path / "results" / "postproc_params.json"
    assert Segmenter.from_checkpoint(checkpoint, device="cpu").postproc == PostprocParams()
    save_postproc_params(side, PostprocParams(min_area=44), tuned_for={"checkpoint_id": "untrained-0"})
    old = Segmenter.from_checkpoint(checkpoint, device="cpu")  # an older checkpoint: the side file, tuned for it
    assert old.postproc.min_area == 44 and "tuned for this checkpoint" in old.postproc_source
    store_postproc(checkpoint, PostprocParams(min_area=55).as_dict(), tuned_on="val (3 images)", score={"pq": 0.5})
    seg = Segmenter.from_checkpoint(checkpoint, device="cpu")
    assert seg.postproc.min_area == 55 and seg.postproc_source == "post-processing: stored in the checkpoint, tuned on val (3 images)"
    assert seg.meta["checkpoint_id"] == "untrained-0"  # storing kept the id
    assert Segmenter.from_checkpoint(checkpoint, device="cpu", postproc={"min_area": 7}).postproc.min_area == 7


def test_result_exports_match_the_label_map(monkeypatch):
    _stand_in(monkeypatch, class_scheme=None)
    image, truth = disks_image((100, 120), [(25, 25), (70, 80)], 12)
    result = Segmenter.from_checkpoint("x.pth", **FAST)(image)
    assert result.n_cells == 2 and result.labels.shape == truth.shape
    assert (result.labels > 0).sum() == (truth > 0).sum()
    coco = result.to_coco(image_id=7)
    assert [a["image_id"] for a in coco["annotations"]] == [7, 7] and coco["images"][0]["height"] == 100
    assert len(result.to_geojson()["features"]) == 2 and result.overlay().shape == (100, 120, 3)
    assert set(result.table()) >= {"id", "class", "score", "area"} and len(result.cell_class_names()) == 2
    with pytest.raises(TypeError, match="images=int"):
        Segmenter.from_checkpoint("x.pth", **FAST)(3)


def test_a_folder_and_segment_folder(tmp_path, monkeypatch):
    paths = _folder(tmp_path / "in")
    _stand_in(monkeypatch)
    seg = Segmenter.from_checkpoint(tmp_path / "m.pth", workers=0, **FAST)
    assert [r.name for r in seg(tmp_path / "in")] == [p.stem for p in paths]
    report = seg.segment_folder(tmp_path / "in", tmp_path / "out", progress=False, overlay="none")
    assert report.n_ok == 2 and json.loads((tmp_path / "out" / "run.json").read_text())["postproc_source"]


def test_uni_seg_imports_no_torch_until_a_name_needs_it():
    import subprocess
    import sys
    code = ("import sys, uni_seg; assert 'torch' not in sys.modules; from uni_seg import PostprocParams, "
            "SegmentationResult; assert 'torch' not in sys.modules; from uni_seg import Segmenter; "
            "assert 'torch' in sys.modules; print(sorted(uni_seg.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr
    assert "Segmenter" in out.stdout


@pytest.mark.parametrize("name", uni_seg.__all__)
def test_every_public_name_has_a_docstring_example_that_runs(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no results/postproc_params.json of a real run is read
    torch.set_num_threads(1)
    obj = getattr(uni_seg, name)
    tests = doctest.DocTestFinder(recurse=False).find(obj, name, globs={})
    assert tests and tests[0].examples, f"{name} has no docstring example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
