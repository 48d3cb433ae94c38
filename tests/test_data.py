"""§1 uni_seg.data: dataset discovery, mask parsing, the split, the processed cache, bad input,
the synthetic generator, the worker pool's processes ending with their parent, and the real subset in
../shared/data/bccd_subset (skipped when absent)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from uni_seg import data as D
from uni_seg import synthetic as S
from uni_seg.config import ATOMIC_TEMP_GLOB, CLASS_SCHEMES
from uni_seg.data import (
    DataError,
    DataWarning,
    build_processed_cache,
    find_dataset,
    format_split_table,
    instance_statistics,
    load_manifest,
    load_processed,
    parse_mask_to_instances,
    read_image,
    read_mask,
    resize_to_working_scale,
    scan_dataset,
    split_train_val,
)
from uni_seg.synthetic import generate_synthetic_dataset, render_synthetic_smear

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- helpers: a tiny raw dataset
def smear(h: int = 60, w: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small RGB image and its binary RGB mask {0, 255}: two touching squares cut by a 2 px
    line, one apart, one speck."""
    rng = np.random.default_rng(seed)
    image = rng.integers(100, 230, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[5:25, 5:25] = 255
    mask[5:25, 27:47] = 255  # columns 25, 26: the separation line
    mask[35:55, 50:75] = 255
    mask[40, 10] = 255  # a 1-pixel speck
    return image, np.repeat(mask[..., None], 3, axis=2)


def write_png(path: Path, rgb_or_gray: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = cv2.cvtColor(rgb_or_gray, cv2.COLOR_RGB2BGR) if rgb_or_gray.ndim == 3 and rgb_or_gray.shape[2] == 3 else rgb_or_gray
    assert cv2.imwrite(str(path), arr)
    return path


def make_raw(root: Path, n_train: int = 6, n_test: int = 2, layout=("original", "mask"), jpg: tuple[str, ...] = ()) -> Path:
    for part, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            stem = f"{part}{i:02d}"
            image, mask = smear(seed=i + (100 if part == "test" else 0))
            ext = ".jpg" if stem in jpg else ".png"
            write_png(root / part / layout[0] / f"{stem}{ext}", image)
            write_png(root / part / layout[1] / f"{stem}.png", mask)
    return root


def build(raw: Path, out: Path, **kw) -> D.CacheSummary:
    args = dict(working_scale=0.5, val_fraction=0.34, seed=1, min_area=10)
    args.update(kw)
    return build_processed_cache(raw, out, **args)


def npz_mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.glob("*/*.npy"))}


# ---------------------------------------------------------------- parse_mask_to_instances
def test_binary_mask_gives_one_instance_per_separated_cell_and_drops_specks():
    _, mask = smear()
    inst, cls = parse_mask_to_instances(mask, min_area=10, source="m.png")
    assert inst.dtype == np.int32 and cls.dtype == np.uint8 and inst.shape == mask.shape[:2]
    assert sorted(np.unique(inst).tolist()) == [0, 1, 2, 3]  # the speck is gone, ids are 1..N
    assert set(np.unique(cls[inst > 0]).tolist()) == {1} and not cls[inst == 0].any()
    assert inst[40, 10] == 0


@pytest.mark.parametrize("variant", ["gray255", "gray01", "rgba", "uint16", "bool", "one_channel"])
def test_binary_masks_in_any_encoding_agree(variant):
    _, mask = smear()
    gray = mask[..., 0]
    encoded = {
        "gray255": gray,
        "gray01": (gray > 0).astype(np.uint8),
        "rgba": np.dstack([mask, np.full(gray.shape, 255, np.uint8)]),
        "uint16": gray.astype(np.uint16) * 257,
        "bool": gray > 0,
        "one_channel": gray[..., None],
    }[variant]
    expected = parse_mask_to_instances(mask, min_area=10)
    got = parse_mask_to_instances(encoded, min_area=10)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_components_are_8_connected_and_min_area_is_inclusive():
    mask = np.zeros((20, 20), np.uint8)
    mask[2:6, 2:6] = 255
    mask[6:10, 6:10] = 255  # touches the first square only at a corner: one 8-connected cell
    mask[14:17, 14:17] = 255  # area 9
    inst, _ = parse_mask_to_instances(mask, min_area=9)
    assert inst.max() == 2 and inst[2, 2] == inst[9, 9]
    assert parse_mask_to_instances(mask, min_area=10)[0].max() == 1


def test_colour_coded_mask_maps_palette_classes_and_keeps_touching_classes_apart():
    mask = np.zeros((30, 40, 3), np.uint8)
    mask[2:12, 2:12] = (255, 0, 0)  # RBC
    mask[2:12, 12:22] = (0, 0, 255)  # WBC touching it: a different instance
    mask[20:24, 30:34] = (0, 255, 0)  # platelet
    mask[20:28, 2:10] = (255, 255, 255)  # cell of unknown type -> RBC
    inst, cls = parse_mask_to_instances(mask, min_area=5)
    assert inst.max() == 4
    assert cls[5, 5] == 1 and cls[5, 15] == 2 and cls[21, 31] == 3 and cls[22, 5] == 1
    assert inst[5, 5] != inst[5, 15]


def test_unknown_colour_is_an_error_naming_colour_and_file():
    mask = np.zeros((10, 10, 3), np.uint8)
    mask[2:5, 2:5] = (255, 0, 0)
    mask[6:8, 6:8] = (12, 34, 56)
    with pytest.raises(DataError, match=r"masks/x\.png.*RGB\(12, 34, 56\)"):
        parse_mask_to_instances(mask, source="masks/x.png")


def test_unexpected_gray_values_are_an_error_naming_values_and_file():
    mask = np.zeros((10, 10), np.uint8)
    mask[2:5, 2:5] = 255
    mask[6:8, 6:8] = 128  # e.g. an anti-aliased or JPEG-saved mask
    with pytest.raises(DataError, match=r"y\.png: unexpected mask values \{0, 128, 255\}"):
        parse_mask_to_instances(mask, source="y.png")


def test_gray_class_index_mask():
    mask = np.zeros((10, 10), np.uint8)
    mask[1:4, 1:4] = 2
    mask[5:9, 5:9] = 3
    inst, cls = parse_mask_to_instances(mask, min_area=1)
    assert inst.max() == 2 and cls[2, 2] == 2 and cls[6, 6] == 3


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 5), np.uint8), np.zeros((4,), np.uint8)])
def test_unsupported_mask_arrays_are_errors(bad):
    with pytest.raises(DataError, match="z.png"):
        parse_mask_to_instances(bad, source="z.png")


def test_instance_statistics_flags_large_and_concave_components():
    inst = np.zeros((100, 100), np.int32)
    for k, (y, x) in enumerate([(5, 5), (5, 30), (5, 55), (30, 5)], start=1):
        inst[y:y + 10, x:x + 10] = k  # four median-sized cells
    inst[50:80, 50:80] = 5  # 9x the median: a clump
    stats = instance_statistics([inst, np.zeros((5, 5), np.int32)])
    assert stats["n_images"] == 2 and stats["n_instances"] == 5 and stats["n_clumps"] == 1
    assert stats["median_area"] == 100


# ---------------------------------------------------------------- find_dataset
def test_find_dataset_pairs_kaggle_layout_by_stem_with_png_and_jpg(tmp_path):
    raw = make_raw(tmp_path / "raw", jpg=("train01",))
    pairs = find_dataset(raw)
    assert [p.stem for p in pairs["train"]] == [f"train{i:02d}" for i in range(6)]
    assert [p.stem for p in pairs["test"]] == ["test00", "test01"]
    assert pairs["train"][1].image_path.suffix == ".jpg" and pairs["train"][1].mask_path.suffix == ".png"
    assert all(p.image_path.parent.name == "original" and p.mask_path.parent.name == "mask" for p in pairs["train"])


def test_find_dataset_accepts_the_seed_layout(tmp_path):
    raw = make_raw(tmp_path / "raw", layout=("images", "masks"))
    assert len(find_dataset(raw)["train"]) == 6
    assert scan_dataset(raw).layout == "images/masks"


def test_unpaired_and_non_image_files_are_skipped_with_warnings_naming_them(tmp_path):
    raw = make_raw(tmp_path / "raw")
    (raw / "train/mask/train03.png").unlink()  # image without mask
    write_png(raw / "test/mask/orphan.png", smear()[1])  # mask without image
    (raw / "train/original/notes.txt").write_text("not an image")
    (raw / "train/original/.DS_Store").write_bytes(b"\0\0")
    with pytest.warns(DataWarning) as record:
        pairs = find_dataset(raw)
    text = " ".join(str(w.message) for w in record)
    assert "2 unpaired" in text and "train03.png" in text and "orphan.png" in text
    assert "2 non-image" in text and "notes.txt" in text
    assert "train03" not in [p.stem for p in pairs["train"]]
    with pytest.warns(DataWarning):
        summary = build(raw, tmp_path / "out")
    assert len(summary.unpaired) == 2 and len(summary.ignored) == 2
    assert "2 unpaired file(s) skipped" in str(summary)


def test_missing_root_missing_partition_and_missing_folders_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*does not exist"):
        find_dataset(tmp_path / "nowhere")
    raw = make_raw(tmp_path / "raw")
    shutil.rmtree(raw / "test")
    with pytest.raises(FileNotFoundError, match=r"test: partition folder missing"):
        find_dataset(raw)
    (raw / "test" / "original").mkdir(parents=True)
    with pytest.raises(DataError, match=r"test: needs original/ \+ mask/.*found only .*original"):
        find_dataset(raw)


def test_empty_folders_are_clear_errors(tmp_path):
    raw = make_raw(tmp_path / "raw")
    for f in (raw / "test/original").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"test/original: no image files"):
        find_dataset(raw)
    make_raw(raw)
    for f in (raw / "test/mask").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"test: no image has a mask"):
        find_dataset(raw)


def test_two_images_with_one_stem_is_an_error(tmp_path):
    raw = make_raw(tmp_path / "raw")
    write_png(raw / "train/original/train00.jpg", smear()[0])
    with pytest.raises(DataError, match="two files with stem 'train00'"):
        find_dataset(raw)


# ---------------------------------------------------------------- reading files and bad input
def test_read_image_returns_rgb_uint8(tmp_path):
    image = np.zeros((4, 5, 3), np.uint8)
    image[..., 0] = 200  # red
    got = read_image(write_png(tmp_path / "a.png", image))
    assert got.dtype == np.uint8 and got.shape == (4, 5, 3) and (got[..., 0] == 200).all() and not got[..., 2].any()


@pytest.mark.parametrize("kind", ["grayscale", "rgba", "16-bit"])
def test_grayscale_rgba_and_16_bit_images_are_converted_and_counted(tmp_path, kind):
    raw = make_raw(tmp_path / "raw")
    image, _ = smear(seed=1)
    path = raw / "train/original/train01.png"
    if kind == "grayscale":
        assert cv2.imwrite(str(path), image[..., 0])
    elif kind == "rgba":
        assert cv2.imwrite(str(path), np.dstack([image[..., ::-1], np.full(image.shape[:2], 255, np.uint8)]))
    else:
        assert cv2.imwrite(str(path), image[..., ::-1].astype(np.uint16) * 257)
    got = read_image(path)
    assert got.dtype == np.uint8 and got.shape == image.shape
    if kind != "grayscale":
        np.testing.assert_array_equal(got, image)
    with pytest.warns(DataWarning, match=kind):
        summary = build(raw, tmp_path / "out")
    assert summary.converted == {kind: 1}
    assert f"1 {kind} image(s) converted" in str(summary)


@pytest.mark.parametrize("kind", ["gray", "rgba", "16-bit", "16-bit-255"])
def test_mask_files_in_other_encodings_parse_the_same(tmp_path, kind):
    raw = make_raw(tmp_path / "raw", n_train=2, n_test=1)
    mask = smear(seed=1)[1][..., 0]
    path = raw / "train/mask/train01.png"
    encoded = {"gray": mask, "rgba": np.dstack([mask, mask, mask, np.full(mask.shape, 255, np.uint8)]),
               "16-bit": mask.astype(np.uint16) * 257, "16-bit-255": mask.astype(np.uint16)}[kind]
    assert cv2.imwrite(str(path), encoded)
    inst, cls = parse_mask_to_instances(read_mask(path), min_area=10, source=path)
    expected = parse_mask_to_instances(mask, min_area=10)
    np.testing.assert_array_equal(inst, expected[0])
    np.testing.assert_array_equal(cls, expected[1])
    assert sum(build(raw, tmp_path / "out").counts.values()) == 3


def corrupt(kind: str, path: Path) -> str:
    """Damage `path` (a valid PNG) in the named way; return the expected message pattern."""
    data = path.read_bytes()
    if kind == "zero-byte":
        path.write_bytes(b"")
        return "empty file"
    if kind == "truncated-png":
        path.write_bytes(data[: len(data) // 2])
        return "truncated PNG"
    if kind == "truncated-jpeg":
        ok, jpg = cv2.imencode(".jpg", cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
        path.write_bytes(jpg.tobytes()[:-300])
        return "truncated JPEG"
    if kind == "not-an-image":
        path.write_text("<html>this is not a picture</html>")
        return "not an image file"
    if kind == "corrupt-body":
        body = bytearray(data)
        body[60:400] = bytes(340)  # header and IEND intact, compressed data destroyed
        path.write_bytes(bytes(body))
        return "corrupt PNG|OpenCV cannot decode"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["zero-byte", "truncated-png", "truncated-jpeg", "not-an-image", "corrupt-body"])
@pytest.mark.parametrize("which", ["original", "mask"])
def test_damaged_files_raise_one_error_naming_the_file(tmp_path, kind, which):
    raw = make_raw(tmp_path / "raw")
    path = raw / "train" / which / "train02.png"
    pattern = corrupt(kind, path)
    with pytest.raises(DataError, match=rf"train02\.png: .*({pattern})"):
        (read_image if which == "original" else read_mask)(path)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=rf"train02\.png: .*({pattern})"):
        build(raw, out)
    assert not list(out.rglob(ATOMIC_TEMP_GLOB))
    manifest = load_manifest(out)  # only complete files are listed, and they all load
    listed = [(s, stem) for s in ("train", "val", "test") for stem in manifest["samples"][s]]
    assert "train02" not in {stem for _, stem in listed}
    for split, stem in listed:
        assert D.open_processed(out / split / f"{stem}.npy")["image"].dtype == np.uint8


def test_image_mask_size_mismatch_names_both(tmp_path):
    raw = make_raw(tmp_path / "raw")
    write_png(raw / "train/mask/train04.png", np.zeros((30, 80, 3), np.uint8))
    with pytest.raises(DataError, match=r"train04\.png: mask is 80x30 but its image train04\.png is 80x60"):
        build(raw, tmp_path / "out")


def test_mask_with_unexpected_values_names_the_mask_file(tmp_path):
    raw = make_raw(tmp_path / "raw")
    mask = smear()[1].copy()
    mask[0, 0] = 7
    write_png(raw / "test/mask/test01.png", mask)
    with pytest.raises(DataError, match=r"test/mask/test01\.png: unexpected mask values \{0, 7, 255\}"):
        build(raw, tmp_path / "out")


def test_missing_mask_is_a_documented_skip_with_a_count(tmp_path):
    raw = make_raw(tmp_path / "raw")
    (raw / "test/mask/test00.png").unlink()
    with pytest.warns(DataWarning, match=r"1 unpaired file\(s\) skipped: .*test00\.png \(no mask"):
        summary = build(raw, tmp_path / "out")
    assert summary.counts["test"] == 1 and len(summary.unpaired) == 1


def test_on_error_skip_leaves_bad_files_out_and_lists_them(tmp_path):
    raw = make_raw(tmp_path / "raw")
    corrupt("zero-byte", raw / "train/original/train05.png")
    with pytest.warns(DataWarning, match="train05.png: empty file"):
        summary = build(raw, tmp_path / "out", on_error="skip")
    assert list(summary.skipped) == ["train/train05"]
    assert summary.counts["train"] + summary.counts["val"] == 5
    assert "1 bad file(s) skipped" in str(summary)
    assert load_manifest(tmp_path / "out")["skipped"] == summary.skipped


def test_a_crash_while_writing_leaves_no_partial_file(tmp_path, monkeypatch):
    raw = make_raw(tmp_path / "raw")
    out = tmp_path / "out"
    calls = {"n": 0}
    real = np.save

    def failing(f, array):
        calls["n"] += 1
        if calls["n"] == 3:
            f.write(b"\x93NUMPYpartial")
            raise OSError("disk full")
        real(f, array)

    monkeypatch.setattr(np, "save", failing)
    with pytest.raises(OSError, match="disk full"):
        build(raw, out)
    monkeypatch.setattr(np, "save", real)
    assert not list(out.rglob(ATOMIC_TEMP_GLOB))
    assert len(list(out.glob("*/*.npy"))) == 2
    summary = build(raw, out)  # the next run completes the cache
    assert summary.counts == {"train": 4, "val": 2, "test": 2}
    for split in ("train", "val", "test"):
        for sample in load_processed(out, split):
            assert sample.load()["inst"].dtype == np.int32


# ---------------------------------------------------------------- the split
def test_split_is_deterministic_sorted_and_85_15():
    stems = [f"img{i:03d}" for i in range(90)]
    train, val = split_train_val(reversed(stems), 0.15, seed=42)
    assert (train, val) == split_train_val(stems, 0.15, seed=42)  # listing order does not matter
    assert len(val) == 14 and len(train) == 76 and not set(train) & set(val) and set(train) | set(val) == set(stems)
    assert train == sorted(train) and val == sorted(val)
    assert split_train_val(stems, 0.15, seed=43) != (train, val)


def test_split_is_the_same_on_every_machine():
    # Recorded once; PCG64's permutation is platform-independent. If NumPy ever changes the
    # stream, this test says so (and old caches keep their split in manifest.json).
    _, val = split_train_val([f"s{i:02d}" for i in range(20)], 0.15, seed=42)
    assert val == ["s09", "s14", "s15"]


def test_split_edge_cases():
    assert split_train_val(["a"], 0.15, 0) == (["a"], [])
    assert split_train_val(["a", "b"], 0.15, 0)[1] in (["a"], ["b"])


def test_split_table_has_the_seed_columns():
    table = format_split_table({"train": 76, "val": 14, "test": 10}, 0.15, 42)
    lines = table.splitlines()
    assert lines[0] == "| Split | Images | % of total | Source |"
    assert "| **Train** | 76 | 76.0% | 85% of the original train partition |" in lines
    assert "| **Total** | 100 | 100% | |" in lines
    assert "untouched" in table and "seed 42" in table


# ---------------------------------------------------------------- the cache
def test_cache_layout_content_and_manifest(tmp_path):
    raw = make_raw(tmp_path / "raw", jpg=("train00",))
    out = tmp_path / "out"
    summary = build(raw, out)
    assert summary.counts == {"train": 4, "val": 2, "test": 2} and summary.written == 8
    manifest = load_manifest(out)
    colour = json.loads(json.dumps(CLASS_SCHEMES["colour"].as_dict()))  # the default scheme, as JSON reads it back
    assert manifest["params"] == {"format": D.CACHE_FORMAT, "working_scale": 0.5, "min_area": 10, "class_scheme": colour,
                                  "class_boxes": None, "val_fraction": 0.34, "seed": 1}
    train, val = split_train_val([f"train{i:02d}" for i in range(6)], 0.34, 1)
    assert manifest["split"] == {"train": train, "val": val, "test": ["test00", "test01"]}
    for split in ("train", "val", "test"):
        for sample in load_processed(out, split):
            entry = manifest["samples"][split][sample.stem]
            assert entry["original_hw"] == [60, 80] and entry["working_hw"] == [30, 40]
            assert (Path(manifest["raw_dir"]) / entry["image"]).is_file() and sample.raw_mask_path.is_file()
            arrays = sample.load()
            assert arrays["image"].shape == (30, 40, 3) and arrays["image"].dtype == np.uint8
            assert arrays["inst"].dtype == np.int32 and arrays["cls"].dtype == np.int8  # int8: UNKNOWN_CLASS is -1
            assert entry["class_counts"] == [0, 3, 0, 0] and entry["unknown"] == 0 and "join" not in entry
            assert arrays["inst"].max() == 3 and sorted(np.unique(arrays["inst"]).tolist()) == [0, 1, 2, 3]
    assert summary.split_table().count("\n") == 5


def test_cache_is_not_rebuilt_when_nothing_changed(tmp_path):
    raw, out = make_raw(tmp_path / "raw"), tmp_path / "out"
    build(raw, out)
    before = npz_mtimes(out)
    summary = build(raw, out)
    assert summary.written == 0 and summary.reused == 8 and npz_mtimes(out) == before


def test_cache_rebuilds_only_the_changed_raw_file(tmp_path):
    raw, out = make_raw(tmp_path / "raw"), tmp_path / "out"
    build(raw, out)
    before = npz_mtimes(out)
    write_png(raw / "test/original/test01.png", smear(seed=7)[0])
    stat = (raw / "test/original/test01.png").stat()
    os.utime(raw / "test/original/test01.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    summary = build(raw, out)
    after = npz_mtimes(out)
    assert summary.written == 1 and summary.reused == 7
    assert [k for k in before if before[k] != after[k]] == ["test/test01.npy"]


@pytest.mark.parametrize("change", [{"working_scale": 0.25}, {"min_area": 500}])
def test_cache_rebuilds_everything_when_preprocessing_changes(tmp_path, change):
    raw, out = make_raw(tmp_path / "raw"), tmp_path / "out"
    build(raw, out)
    summary = build(raw, out, **change)
    assert summary.written == 8 and summary.reused == 0
    sample = load_processed(out, "test")[0]
    if "working_scale" in change:
        assert sample.load()["image"].shape == (15, 20, 3)
    else:
        assert sample.load()["inst"].max() == 1  # only the 500 px cell survives at full scale


def test_changing_the_split_moves_files_without_rewriting(tmp_path):
    raw, out = make_raw(tmp_path / "raw"), tmp_path / "out"
    build(raw, out)
    summary = build(raw, out, seed=99, val_fraction=0.5)
    assert summary.written == 0 and summary.moved + summary.reused == 8 and summary.moved > 0
    manifest = load_manifest(out)
    for split in ("train", "val", "test"):
        assert sorted(p.stem for p in (out / split).glob("*.npy")) == manifest["split"][split]


def test_removed_raw_files_are_removed_from_the_cache(tmp_path):
    raw, out = make_raw(tmp_path / "raw"), tmp_path / "out"
    build(raw, out)
    (raw / "test/original/test01.png").unlink()
    (raw / "test/mask/test01.png").unlink()
    summary = build(raw, out)
    assert summary.removed == 1 and not (out / "test/test01.npy").exists()


def test_cache_refuses_a_file_in_its_way_that_no_build_wrote_and_keeps_it(tmp_path):
    raw, out = make_raw(tmp_path / "raw"), tmp_path / "out"
    (out / "test").mkdir(parents=True)
    (out / "test/test00.npy").write_bytes(b"the user's own array")  # where the cache would write test00
    with pytest.raises(D.DataError, match=r"test/test00\.npy: in the processed cache's folder, but its manifest"):
        build(raw, out)
    assert (out / "test/test00.npy").read_bytes() == b"the user's own array"
    (out / "test/test00.npy").rename(tmp_path / "kept.npy")
    build(raw, out)
    (out / "val/notes.npy").write_bytes(b"mine")  # not in the dataset: the old build deleted it as stale
    with pytest.raises(D.DataError, match=r"val/notes\.npy.*move it out of"):
        build(raw, out)
    assert (out / "val/notes.npy").read_bytes() == b"mine"


def test_cache_refuses_a_manifest_that_is_not_ours(tmp_path):
    raw, out = make_raw(tmp_path / "raw", n_train=2, n_test=1), tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text('{"name": "my packing list"}')
    with pytest.raises(D.DataError, match=r"manifest\.json is not a processed cache's manifest"):
        build(raw, out)
    assert (out / "manifest.json").read_text() == '{"name": "my packing list"}'


def test_stale_files_of_ours_are_still_removed_and_rebuilt_from_the_record(tmp_path):
    raw, out = make_raw(tmp_path / "raw"), tmp_path / "out"
    build(raw, out)
    assert load_manifest(out)["files"] == sorted(f"{s}/{p.name}" for s in ("train", "val", "test")
                                                 for p in (out / s).glob("*.npy"))
    # a manifest from before the list of files (and a file of the older .npz format it vouched for)
    manifest = load_manifest(out)
    del manifest["files"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "test/test01.npz").write_bytes(b"older format")
    for sub in ("original", "mask"):
        (raw / f"test/{sub}/test01.png").unlink()
    summary = build(raw, out, working_scale=0.25)  # stale: every file rewritten, test01 gone
    assert summary.written == 7 and summary.removed == 2
    assert not (out / "test/test01.npy").exists() and not (out / "test/test01.npz").exists()
    assert load_manifest(out)["files"] == sorted(f"{s}/{stem}.npy" for s in ("train", "val", "test")
                                                 for stem in load_manifest(out)["split"][s])


def test_cache_build_killed_half_way_lists_what_it_wrote_and_the_next_build_goes_on(tmp_path):
    raw, out = make_raw(tmp_path / "raw"), tmp_path / "out"
    good = (raw / "test/original/test01.png").read_bytes()
    (raw / "test/original/test01.png").write_bytes(b"")  # the last file written: the build stops there
    with pytest.raises(D.DataError):
        build(raw, out)
    written = sorted(f"{s}/{p.name}" for s in ("train", "val", "test") for p in (out / s).glob("*.npy"))
    assert len(written) == 7 and set(written) <= set(load_manifest(out)["files"])
    (raw / "test/original/test01.png").write_bytes(good)
    assert build(raw, out).counts == {"train": 4, "val": 2, "test": 2}


def test_a_second_cache_build_into_the_same_folder_is_refused_while_one_runs(tmp_path):
    from uni_seg.files import FolderInUse, folder_lock

    raw, out = make_raw(tmp_path / "raw", n_train=2, n_test=1), tmp_path / "out"
    with folder_lock(out):  # as another build holds it; a lock on its own open file conflicts even in one process
        with pytest.raises(FolderInUse, match="so this processed cache build cannot write there"):
            build(raw, out)
    assert not (out / "manifest.json").exists()
    build(raw, out)


def test_parallel_build_matches_serial(tmp_path):
    raw = make_raw(tmp_path / "raw", n_train=4, n_test=2)
    build(raw, tmp_path / "serial")
    build(raw, tmp_path / "pool", num_workers=2)
    for split in ("train", "val", "test"):
        for a, b in zip(load_processed(tmp_path / "serial", split), load_processed(tmp_path / "pool", split)):
            for key, value in a.load().items():
                np.testing.assert_array_equal(value, b.load()[key])


def test_resize_keeps_ids_and_classes_consistent():
    inst = np.zeros((100, 120), np.int32)
    cls = np.zeros((100, 120), np.uint8)
    inst[10:50, 10:50], cls[10:50, 10:50] = 4, 1
    inst[60:90, 60:110], cls[60:90, 60:110] = 9, 2
    inst[95, 5] = 7  # one pixel: vanishes at scale 0.25
    image = np.full((100, 120, 3), 200, np.uint8)
    image_s, inst_s, cls_s = resize_to_working_scale(image, inst, cls, 0.25)
    assert image_s.shape == (25, 30, 3) and inst_s.shape == cls_s.shape == (25, 30)
    assert sorted(np.unique(inst_s).tolist()) == [0, 1, 2]  # renumbered in order
    assert set(np.unique(cls_s[inst_s == 1]).tolist()) == {1} and set(np.unique(cls_s[inst_s == 2]).tolist()) == {2}
    assert resize_to_working_scale(image, inst, cls, 1.0)[1] is not inst


# ---------------------------------------------------------------- synthetic smears
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "smears"
    generate_synthetic_dataset(root, 4, 2, seed=3, image_size=(180, 240), cell_diameter=40.0)
    return root


def test_synthetic_dataset_is_in_kaggle_layout_with_binary_masks_and_truth(synthetic):
    pairs = find_dataset(synthetic)
    assert len(pairs["train"]) == 4 and len(pairs["test"]) == 2
    for pair in pairs["train"] + pairs["test"]:
        image, mask = read_image(pair.image_path), read_mask(pair.mask_path)
        assert image.shape == (180, 240, 3) and mask.shape == (180, 240, 3)
        assert set(np.unique(mask).tolist()) <= {0, 255} and (mask[..., 0] == mask[..., 2]).all()
        inst, cls = S.load_synthetic_truth(pair)
        assert inst.shape == (180, 240) and inst.max() >= 10


def test_synthetic_masks_parse_back_to_the_true_cells(synthetic):
    for pair in find_dataset(synthetic)["train"]:
        true_inst, true_cls = S.load_synthetic_truth(pair)
        inst, _ = parse_mask_to_instances(read_mask(pair.mask_path), min_area=20)
        fg = inst > 0
        assert fg.sum() > 0.85 * (true_inst > 0).sum()  # only the 2 px lines and specks are lost
        # every parsed cell lies inside exactly one true cell, and most true cells are found
        pairs_found = np.unique(np.stack([inst[fg], true_inst[fg]]), axis=1)
        assert len(np.unique(pairs_found[0])) == pairs_found.shape[1]
        assert len(np.unique(pairs_found[1])) >= 0.9 * true_inst.max()


def test_synthetic_cells_touch_and_are_separated_by_lines():
    s = render_synthetic_smear(np.random.default_rng(0), 240, 320, 40.0)
    lines = S.separation_lines(s.inst)
    assert lines.sum() > 50  # cells touch or overlap
    fg = s.mask[..., 0] > 0
    assert not (fg & lines).any()
    assert set(np.unique(s.cls).tolist()) >= {0, 1}
    dark = s.image.mean(axis=2)
    assert dark[s.inst == 0].mean() > dark[s.inst > 0].mean() + 20  # cells are stained, background pale


def test_synthetic_palette_masks_carry_classes(tmp_path):
    root = tmp_path / "pal"
    generate_synthetic_dataset(root, 3, 1, seed=5, image_size=(200, 260), cell_diameter=40.0, mask_style="palette",
                               n_wbc=(1, 2), n_platelets=(3, 5))
    pair = find_dataset(root)["train"][0]
    inst, cls = parse_mask_to_instances(read_mask(pair.mask_path), min_area=5)
    _, true_cls = S.load_synthetic_truth(pair)
    assert {2, 3} <= set(np.unique(cls).tolist())
    agree = (cls == true_cls) | (cls == 0)
    assert agree.all()


def test_synthetic_generation_is_deterministic_idempotent_and_careful(tmp_path, synthetic):
    other = tmp_path / "again"
    generate_synthetic_dataset(other, 4, 2, seed=3, image_size=(180, 240), cell_diameter=40.0)
    for a, b in zip(sorted(synthetic.rglob("*.png")), sorted(other.rglob("*.png"))):
        assert a.read_bytes() == b.read_bytes()
    before = {p: p.stat().st_mtime_ns for p in other.rglob("*.png")}
    generate_synthetic_dataset(other, 4, 2, seed=3, image_size=(180, 240), cell_diameter=40.0)
    assert before == {p: p.stat().st_mtime_ns for p in other.rglob("*.png")}
    generate_synthetic_dataset(other, 2, 1, seed=4, image_size=(180, 240), cell_diameter=40.0)
    assert len(list((other / "train/original").iterdir())) == 2
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a synthetic dataset"):
        generate_synthetic_dataset(foreign, 1, 1, seed=0)


def test_synthetic_data_through_the_cache(synthetic, tmp_path):
    summary = build_processed_cache(synthetic, tmp_path / "p", working_scale=0.5, val_fraction=0.25, seed=0, min_area=20)
    assert summary.counts == {"train": 3, "val": 1, "test": 2}
    stats = instance_statistics(s.load()["inst"] for s in load_processed(tmp_path / "p", "train"))
    assert stats["n_instances"] > 20


# ---------------------------------------------------------------- the real subset
def test_real_subset_is_found_and_read(real_subset, tmp_path):
    real = real_subset
    pairs = find_dataset(real)
    assert len(pairs["train"]) == 90 and len(pairs["test"]) == 10
    jpg = next(p for p in pairs["train"] if p.image_path.suffix == ".jpg")
    image = read_image(jpg.image_path)
    assert image.dtype == np.uint8 and image.shape == (1383, 1944, 3)


def test_real_masks_parse_to_about_72_cells_each(real_subset):
    real = real_subset
    for pair in find_dataset(real)["test"][:3]:
        mask = read_mask(pair.mask_path)
        assert mask.shape == (1200, 1600, 3) and set(np.unique(mask).tolist()) == {0, 255}
        inst, cls = parse_mask_to_instances(mask, min_area=30, source=pair.mask_path)
        assert 15 <= inst.max() <= 150
        assert set(np.unique(cls).tolist()) == {0, 1}
        assert np.bincount(inst.ravel())[1:].min() >= 30


def test_real_pairs_through_the_cache(real_subset, tmp_path):
    real = real_subset
    raw = tmp_path / "raw"
    pairs = find_dataset(real)
    for part, chosen in (("train", pairs["train"][:2]), ("test", pairs["test"][:1])):
        for pair in chosen:
            for src, sub in ((pair.image_path, "original"), (pair.mask_path, "mask")):
                (raw / part / sub).mkdir(parents=True, exist_ok=True)
                (raw / part / sub / src.name).symlink_to(src)
    summary = build_processed_cache(raw, tmp_path / "p", working_scale=0.5, val_fraction=0.15, seed=42, min_area=30)
    assert summary.counts == {"train": 1, "val": 1, "test": 1}
    sample = load_processed(tmp_path / "p", "test")[0]
    assert sample.original_hw == (1200, 1600) and sample.working_hw == (600, 800)
    arrays = sample.load()
    assert 15 <= arrays["inst"].max() <= 150


@pytest.mark.slow
def test_real_subset_component_counts_as_documented(real_subset):
    real = real_subset
    masks = sorted((real / "train/mask").glob("*.png")) + sorted((real / "test/mask").glob("*.png"))
    assert len(masks) == 100
    n8 = n4 = n30 = 0
    maps = []
    for path in masks:
        fg = (read_mask(path)[..., 0] > 0).view(np.uint8)
        n8 += cv2.connectedComponents(fg, connectivity=8)[0] - 1
        n4 += cv2.connectedComponents(fg, connectivity=4)[0] - 1
        inst, _ = parse_mask_to_instances(read_mask(path), min_area=30)
        n30 += int(inst.max())
        maps.append(inst)
    assert (n8, n4, n30) == (7212, 11429, 7187)
    stats = instance_statistics(maps)
    assert stats["n_clumps"] == 194 and stats["median_area"] == 8078


def test_real_subset_is_found_beside_the_checkout_or_its_origin(tmp_path, monkeypatch):
    import real_subset as rs

    monkeypatch.delenv("BCCD_SUBSET", raising=False)
    origin = tmp_path / "work" / "main"
    (tmp_path / "work" / rs.RELATIVE / "train" / "mask").mkdir(parents=True)
    origin.mkdir()
    clone = tmp_path / "ci" / "clone"
    clone.mkdir(parents=True)
    if os.system(f"git -C {clone} init -q && git -C {clone} remote add origin {origin}") != 0:
        pytest.skip("git unavailable")
    assert rs.find_real_subset(clone) == (tmp_path / "work" / rs.RELATIVE).resolve()
    assert rs.find_real_subset(origin) == tmp_path / "work" / rs.RELATIVE
    monkeypatch.setenv("BCCD_SUBSET", str(tmp_path / "elsewhere"))
    assert rs.find_real_subset(clone) is None and rs.candidate_dirs(clone) == [tmp_path / "elsewhere"]


# ---------------------------------------------------------------- issue 21: a dataset that cannot teach
def test_issue21_case8_a_dataset_whose_masks_are_all_empty_is_refused_with_the_counts(tmp_path):
    raw = make_raw(tmp_path / "raw", n_train=7)
    for mask in (raw / "train" / "mask").iterdir():
        write_png(mask, np.zeros((60, 80, 3), np.uint8))
    build(raw, tmp_path / "out")
    manifest = D.load_manifest(tmp_path / "out")
    n_train = len(manifest["samples"]["train"])
    with pytest.raises(DataError, match=f"{n_train} of the {n_train} train masks hold no cell"):
        D.check_training_masks(manifest)


def _manifest(cells_per_image: list[int]) -> dict:
    return {"params": {"min_area": 10},
            "samples": {"train": {f"im{k}": {"n_instances": n} for k, n in enumerate(cells_per_image)}}}


def test_issue21_case8_one_empty_mask_among_eight_is_named():
    assert D.check_training_masks(_manifest([5] * 8)) == ""
    warning = D.check_training_masks(_manifest([5, 5, 0, 5, 5, 5, 5, 5]))
    assert "1 of the 8 train masks hold no cell (im2)" in warning


def test_most_masks_empty_is_refused_too():
    """Principle 'a dataset that cannot teach is refused', on a case the issue does not list:
    5 of 8 masks empty (most, not all)."""
    with pytest.raises(DataError, match="5 of the 8 train masks hold no cell"):
        D.check_training_masks(_manifest([0, 0, 0, 0, 0, 5, 5, 5]))


# ---------------------------------------------------------------- the processed cache file (from test_targets.py)
def test_an_old_cache_file_is_refused_by_name(tmp_path):
    from uni_seg import data

    old = tmp_path / "a.npy"
    np.save(old, np.zeros((4, 4), np.uint8))
    with pytest.raises(data.DataError, match="a.npy.*rebuild the cache"):
        data.open_processed(old)


# ---------------------------------------------------------------- CPU workers end with their parent
# Issue 16, faults met trying the project as a new user: no process outlives a killed run.
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a FIFO opened read-write: Linux")
def test_cpu_workers_end_when_their_parent_is_killed(tmp_path, read_pids):
    """A forkserver's workers are its children and keep it alive: they must watch the process
    that made the pool, or a killed run leaves them (and the forkserver) running."""
    psutil = pytest.importorskip("psutil")
    # each worker announces its pid once it holds its task: the kill comes after both did, not after a clock
    fifo = tmp_path / "workers.fifo"
    os.mkfifo(fifo)
    (tmp_path / "holder.py").write_text("import os, threading\n"
                                        "def hold(fifo):\n"
                                        "    with open(fifo, 'a') as handle:\n"
                                        "        handle.write(f'{os.getpid()}\\n')\n"
                                        "    threading.Event().wait()\n")
    script = ("import sys, threading\n"
              "from uni_seg.data import WorkerPool\n"
              "from holder import hold\n"
              "if __name__ == '__main__':\n"
              "    pool = WorkerPool(2)\n"
              f"    busy = [pool.submit(hold, {str(fifo)!r}) for _ in range(2)]\n"
              "    print('started', flush=True)\n"
              "    threading.Event().wait()\n")
    (tmp_path / "pool.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    parent = subprocess.Popen([sys.executable, str(tmp_path / "pool.py")], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    descendants: list = []
    try:
        assert parent.stdout.readline().strip() == "started"
        workers = read_pids(fifo, set(), 2, exclude=parent.pid)
        assert len(workers) == 2, "the two workers did not start"
        descendants = psutil.Process(parent.pid).children(recursive=True)  # the forkserver and its two workers
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        _, alive = psutil.wait_procs(descendants, timeout=60)
        assert descendants and not alive, f"{len(alive)} of {len(descendants)} worker process(es) outlived the parent"
    finally:
        parent.kill()
        for process in descendants:
            if process.is_running():
                process.kill()
