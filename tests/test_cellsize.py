"""§1's cell size: Otsu foreground on lightness, granulometry, a folder's diameter, the working
scale that brings a folder's cells to the training size, and the size recorded in checkpoints."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from uni_seg.cellsize import (MEASURE_IMAGES, cell_diameter, cell_foreground, folder_cell_diameter, granulometry,
                              working_scale_for_cells)


def test_the_foreground_is_the_darker_cells_with_their_pale_centres_filled(smear):
    image, cells = smear(60, with_mask=True)
    foreground = cell_foreground(image)
    assert (foreground == cells).mean() > 0.99 and (foreground & cells).sum() > 0.97 * cells.sum()
    assert not cell_foreground(np.full((20, 20, 3), 128, np.uint8)).any()  # a flat image shows no cells


def test_granulometry_of_a_disc_falls_at_its_radius():
    disc = np.zeros((101, 101), bool)
    ys, xs = np.indices(disc.shape)
    disc[(ys - 50) ** 2 + (xs - 50) ** 2 <= 20**2] = True
    covered = granulometry(disc, [5, 15, 19, 22, 30])
    assert covered[0] > 0.98 and covered[1] > 0.95 and covered[3] == 0 and covered[4] == 0


@pytest.mark.parametrize("diameter", [24, 48, 96])
def test_the_measured_diameter_follows_the_cells_not_the_image(smear, diameter):
    measured = cell_diameter(smear(diameter))
    assert 0.85 * diameter < measured < 1.08 * diameter
    # cells that all touch their neighbours are not read as clumps twice their size
    assert 0.85 * diameter < cell_diameter(smear(diameter, touching=True)) < 1.25 * diameter


def test_a_larger_image_of_the_same_cells_reads_larger_by_the_same_factor(smear):
    image = smear(40, shape=(300, 400))
    big = cv2.resize(image, (1200, 900), interpolation=cv2.INTER_LINEAR)  # measured on a 640 px copy
    assert cell_diameter(big) / cell_diameter(image) == pytest.approx(3.0, rel=0.08)


def test_an_image_without_cells_measures_nothing():
    assert math.isnan(cell_diameter(np.full((50, 60, 3), 200, np.uint8)))
    assert math.isnan(folder_cell_diameter([np.full((50, 60, 3), 200, np.uint8)]))


def test_a_folder_takes_the_median_of_its_first_images(smear, tmp_path):
    images = [smear(30, seed=1), smear(30, seed=2), smear(60, seed=3)]
    assert folder_cell_diameter(images) == pytest.approx(cell_diameter(images[1]), rel=0.1)
    assert folder_cell_diameter(images, limit=1) == cell_diameter(images[0])
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), cv2.cvtColor(images[0], cv2.COLOR_RGB2BGR))
    assert folder_cell_diameter([path]) == pytest.approx(cell_diameter(images[0]))


def test_the_working_scale_brings_the_cells_to_the_training_size(smear):
    images = [smear(80, seed=s) for s in range(2)]
    measured = folder_cell_diameter(images)
    scale, line = working_scale_for_cells(images, 40.0, 0.5)
    assert scale == pytest.approx(40.0 / measured) and f"up to {MEASURE_IMAGES} images" in line
    scale, line = working_scale_for_cells(images, 40.0, 0.5, cell_diameter_px=160)
    assert scale == 0.25 and "as given" in line and "160 px" in line
    scale, line = working_scale_for_cells(images, None, 0.5)  # an older checkpoint: no record
    assert scale == 0.5 and "does not record the cell diameter" in line
    scale, line = working_scale_for_cells([np.full((40, 40, 3), 9, np.uint8)], 40.0, 0.5)
    assert scale == 0.5 and "no cells to measure" in line
    assert working_scale_for_cells(images, 40.0, 0.5, cell_diameter_px=1.0)[0] == 4.0  # InferenceSettings' range


def test_the_cell_diameter_is_recorded_in_the_spec_and_read_back_from_a_checkpoint(tmp_path):
    import torch

    from uni_seg import checkpoints, model as model_mod, train
    from uni_seg.config import resolve_config
    from uni_seg.cache import build_processed_cache
    from uni_seg.synthetic import generate_synthetic_dataset

    generate_synthetic_dataset(tmp_path / "raw", 3, 1, seed=3, image_size=(160, 200), cell_diameter=40.0)
    build_processed_cache(tmp_path / "raw", tmp_path / "processed", working_scale=0.5, val_fraction=0.34, seed=0,
                          min_area=20)
    cfg = resolve_config("demo", processed_dir=str(tmp_path / "processed"), checkpoint_dir=str(tmp_path / "ck"))
    spec = train.spec_from_config(cfg, 1)
    assert 15 < spec.cell_diameter < 22  # 40 px cells at scale 0.5, measured a little under
    assert train.spec_from_json(train.spec_to_json(spec)).cell_diameter == spec.cell_diameter
    assert train.spec_from_config(resolve_config("demo", processed_dir=str(tmp_path / "none")), 1).cell_diameter is None
    net = model_mod.build_model("vit_tiny", weights="none", decoder_channels=16, verbose=False)
    path = tmp_path / "best_phase1.pth"
    torch.save({"format": checkpoints.CHECKPOINT_FORMAT, "format_version": checkpoints.CHECKPOINT_VERSION, "phase": 1,
                "model_config": net.config, "working_scale": 0.5, "cell_diameter": spec.cell_diameter,
                "model_state_dict": net.state_dict()}, path)
    assert checkpoints.load_model_from_checkpoint(path)[1]["cell_diameter"] == spec.cell_diameter


# ------------------------------------------------------------------ real smears of two labs
def test_on_real_smears_the_measurement_reads_the_same_share_of_the_true_size(real_subset, bccd_detection):
    """The subset's masks and BCCD's red-cell boxes: the measurement reads nearly the same share
    of the true size in both labs' images, so the ratio of two measurements is the ratio of the
    cells' sizes (what the working scale needs)."""
    import xml.etree.ElementTree as ET

    from uni_seg.data import parse_mask_to_instances, read_image, read_mask

    subset, bccd = real_subset, bccd_detection
    shares = []
    for mask in sorted((subset / "train" / "mask").glob("*.png"))[:6]:
        image = next(p for p in (subset / "train" / "original").glob(mask.stem + ".*"))
        inst = parse_mask_to_instances(read_mask(mask), source=mask)[0]
        areas = np.bincount(inst.ravel())[1:]
        shares.append(cell_diameter(read_image(image)) / np.median(2 * np.sqrt(areas[areas > 0] / np.pi)))
    subset_share = float(np.median(shares))
    sides = []
    for xml in sorted((bccd / "Annotations").glob("*.xml"))[:16]:
        for obj in ET.parse(xml).getroot().findall("object"):
            if obj.findtext("name") == "RBC":
                box = [float(obj.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")]
                sides.append(math.sqrt((box[2] - box[0]) * (box[3] - box[1])))
    bccd_share = folder_cell_diameter(sorted((bccd / "JPEGImages").glob("*.jpg"))) / float(np.median(sides))
    assert 0.8 < subset_share < 1.0 and 0.8 < bccd_share < 1.0
    assert abs(subset_share - bccd_share) < 0.1


def test_issue21_case4_unreadable_files_among_the_first_images_are_skipped_and_said(smear, tmp_path):
    (tmp_path / "a_empty.png").write_bytes(b"")
    good = tmp_path / "b.png"
    cv2.imwrite(str(good), cv2.cvtColor(smear(30, seed=1), cv2.COLOR_RGB2BGR))
    (tmp_path / "c_truncated.png").write_bytes(good.read_bytes()[:200])
    unreadable: list = []
    files = sorted(tmp_path.iterdir())
    assert folder_cell_diameter(files, limit=1, unreadable=unreadable) == pytest.approx(cell_diameter(smear(30, seed=1)), rel=0.01)
    assert [name for name, _ in unreadable] == [str(tmp_path / "a_empty.png")]  # the limit counts readable images
    scale, line = working_scale_for_cells(files, 15.0, 0.5)
    assert scale == pytest.approx(0.5, rel=0.15) and "2 unreadable image(s) not measured" in line and "empty file" in line


def test_a_scale_outside_the_range_is_said_not_hidden(smear):
    images = [smear(30, seed=1)]
    scale, line = working_scale_for_cells(images, 40.0, 0.5, cell_diameter_px=1.0)
    assert scale == 4.0 and "is outside [1/16, 4]" in line


def _png_header_claiming(path, width: int, height: int) -> None:
    """A small PNG file whose header claims `width` x `height` RGB pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))


def test_an_image_too_large_for_the_decoder_is_skipped_by_the_measurement(smear, tmp_path):
    """Principle 'one bad input never stops a folder run', on a case the issue does not list:
    a PNG whose header claims more pixels than OpenCV decodes (on main an OpenCV error that
    ended the measurement, and the run)."""
    from uni_seg.data import DataError, read_image

    _png_header_claiming(tmp_path / "a_huge.png", 50_000, 50_000)
    with pytest.raises(DataError, match="a_huge.png: OpenCV cannot decode .*CV_IO_MAX_IMAGE_PIXELS"):
        read_image(tmp_path / "a_huge.png")
    cv2.imwrite(str(tmp_path / "b.png"), cv2.cvtColor(smear(30, seed=1), cv2.COLOR_RGB2BGR))
    unreadable: list = []
    assert math.isfinite(folder_cell_diameter(sorted(tmp_path.iterdir()), unreadable=unreadable))
    assert len(unreadable) == 1 and "a_huge.png" in unreadable[0][0]
