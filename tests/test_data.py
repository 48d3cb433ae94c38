"""§1 uni_seg.data: dataset discovery, mask parsing, the split, the processed cache, bad input,
the synthetic generator, the worker pool's processes ending with their parent, and the real subset in
../shared/data/bccd_subset (skipped when absent)."""

from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import pytest

from raw_smears import build, corrupt, make_raw, smear, write_png
from uni_seg import cache as cache_mod
from uni_seg import synthetic as S
from uni_seg.files import ATOMIC_TEMP_GLOB
from uni_seg.cache import load_manifest
from uni_seg.data import (DataError, DataWarning, find_dataset, format_split_table, instance_statistics,
                          parse_mask_to_instances, read_image, read_mask, resize_to_working_scale, scan_dataset,
                          split_train_val)
from uni_seg.synthetic import generate_synthetic_dataset, render_synthetic_smear



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
        assert cache_mod.open_processed(out / split / f"{stem}.npy")["image"].dtype == np.uint8


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

