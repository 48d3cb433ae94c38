"""§2 uni_seg.augment: geometric augmentation with exact HV targets, training windows, the stain
and colour robustness settings, and per-transform seeds."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytest

from uni_seg import cache as cache_mod
from uni_seg.synthetic import render_synthetic_smear
from uni_seg.targets import hv_maps
from uni_seg.augment import CellAugmenter, seed_transforms
from uni_seg.dataset import CellCropDataset

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- augmentation
@pytest.fixture(scope="module")
def smear():
    s = render_synthetic_smear(np.random.default_rng(4), 160, 200, 40.0, n_wbc=(1, 2), n_platelets=(2, 4))
    return s.image, s.inst, s.cls


@pytest.mark.parametrize("crop", [64, 96])
def test_hv_target_after_augmentation_equals_hv_maps_of_the_augmented_instances(smear, crop):
    image, inst, cls = smear
    class_of = np.zeros(inst.max() + 1, np.uint8)
    class_of[inst] = cls
    augment = CellAugmenter(crop)
    changed = 0
    for seed in range(30):
        image_t, inst_t, t = augment(image, inst, cls, seed)
        assert image_t.shape == (crop, crop, 3) and image_t.dtype == np.uint8 and inst_t.shape == (crop, crop)
        np.testing.assert_array_equal(t["hv"], hv_maps(inst_t))
        np.testing.assert_array_equal(t["np"], (inst_t > 0).astype(np.float32))
        np.testing.assert_array_equal(t["nc"], class_of[inst_t])  # each instance keeps its class
        assert set(np.unique(inst_t).tolist()) <= set(np.unique(inst).tolist())  # no id invented
        changed += not any(np.array_equal(inst_t, inst[y:y + crop, x:x + crop])
                           for y in range(0, 160 - crop, 8) for x in range(0, 200 - crop, 8))
    assert changed > 10  # geometry really happens


def test_augmentation_is_reproducible_per_seed(smear):
    image, inst, cls = smear
    a, b = CellAugmenter(64), CellAugmenter(64)
    first, again, other = a(image, inst, cls, (1, 2, 3)), b(image, inst, cls, (1, 2, 3)), a(image, inst, cls, (1, 2, 4))
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_a_crop_from_the_memory_mapped_cache_file_is_the_crop_from_memory(tmp_path, smear):
    """Crop first: the augmenter cuts its window out of views of the file, and gets what it
    gets from the whole image read into memory."""

    image, inst, cls = smear
    path = tmp_path / "smear.npy"
    cache_mod.save_processed_atomic(path, image, inst, cls.astype(np.int8))
    mapped, whole = cache_mod.open_processed(path), cache_mod.open_processed(path, in_memory=True)
    assert isinstance(mapped["inst"], np.memmap) and not isinstance(whole["inst"], np.memmap)
    np.testing.assert_array_equal(whole["inst"], inst)
    np.testing.assert_array_equal(whole["image"], image)
    augment = CellAugmenter(64)
    for seed in range(5):
        from_file = augment(mapped["image"], mapped["inst"], mapped["cls"], (0, 1, seed))
        from_memory = augment(image, inst, cls.astype(np.int8), (0, 1, seed))
        for a, b in zip(from_file[:2], from_memory[:2]):
            np.testing.assert_array_equal(a, b)
        for key in ("np", "hv", "nc"):
            np.testing.assert_array_equal(from_file[2][key], from_memory[2][key])


@pytest.mark.parametrize("length, window", [(100, 40), (40, 40), (30, 40), (1, 40)])
def test_a_training_window_lies_inside_the_image_or_pads_a_shorter_side(length, window):
    from uni_seg.augment import random_window

    rng = np.random.default_rng(0)
    for _ in range(50):
        read, (before, after) = random_window(length, window, rng)
        assert 0 <= read.start <= read.stop <= length and before >= 0 and after >= 0
        assert read.stop - read.start + before + after == window
        if length < window:  # all of a short side, padded
            assert (read.start, read.stop) == (0, length)
        else:
            assert before == after == 0


# ---------------------------------------------------------- stain and colour robustness
def test_the_stain_jitter_is_exact_without_jitter_and_moves_one_stain_when_asked(smear):
    from uni_seg.augment import hed_jitter

    image = np.maximum(smear[0], 1)  # 0 comes back as 1 (the optical density of 0 is infinite)
    np.testing.assert_array_equal(hed_jitter(image, [1, 1, 1], [0, 0, 0]), image)
    more_eosin = hed_jitter(image, [1, 2, 1], [0, 0, 0]).astype(int)
    # eosin absorbs green: the stained pixels lose green and red stays nearly as it was
    stained = image.sum(-1) < 600
    assert (more_eosin[stained, 1] - image[stained, 1]).mean() < -5
    assert abs((more_eosin[stained, 0] - image[stained, 0]).mean()) < abs((more_eosin[stained, 1] - image[stained, 1]).mean())


def test_each_photometric_part_is_switched_by_its_setting():
    from uni_seg.augment import BEFORE_STAIN_ROBUSTNESS, HEDJitter, StainAugmentation, photometric_transform

    def kinds(stain):
        return [type(t).__name__ for t in photometric_transform(stain).transforms]

    assert kinds(BEFORE_STAIN_ROBUSTNESS) == ["ColorJitter", "GaussianBlur", "GaussNoise", "CoarseDropout"]
    off = StainAugmentation(hed=0, hue=0, saturation=0, brightness_contrast=0, grayscale=0, blur=0, jpeg=100)
    assert kinds(off) == ["GaussNoise", "CoarseDropout"]
    everything = StainAugmentation(hed=0.4, hue=0.1, saturation=0.3, brightness_contrast=0.3, grayscale=0.2, blur=2.0,
                                   jpeg=40)
    assert kinds(everything) == ["HEDJitter", "ColorJitter", "ToGray", "GaussianBlur", "GaussNoise", "ImageCompression",
                                 "CoarseDropout"]
    assert kinds(off.replace(grayscale=0.5)) == ["ToGray", "GaussNoise", "CoarseDropout"]
    jitter = photometric_transform(off.replace(hed=0.5)).transforms[0]
    assert isinstance(jitter, HEDJitter) and jitter.strength == 0.5


@pytest.mark.parametrize("field, value", [("hed", 1.5), ("hue", 0.6), ("grayscale", -0.1), ("blur", True),
                                          ("jpeg", 0), ("jpeg", 50.5)])
def test_a_bad_augmentation_setting_is_named(field, value):
    from uni_seg.augment import StainAugmentation

    with pytest.raises(ValueError, match=f"^{field}="):
        StainAugmentation(**{field: value})


def test_stronger_stain_augmentation_changes_crops_reproducibly(smear):
    from uni_seg.augment import StainAugmentation

    image, inst, cls = smear
    strong = StainAugmentation(hed=0.5, hue=0.2, saturation=0.4, brightness_contrast=0.4, grayscale=0.3, blur=2.0,
                               jpeg=30)
    a, b, mild = CellAugmenter(64, strong), CellAugmenter(64, strong), CellAugmenter(64)
    first, again, other = a(image, inst, cls, 5), b(image, inst, cls, 5), mild(image, inst, cls, 5)
    assert np.array_equal(first[0], again[0])
    assert np.array_equal(first[1], other[1]) and not np.array_equal(first[0], other[0])  # same geometry, other colours


def test_the_run_parameters_reach_the_training_crops(cache):
    from uni_seg.augment import StainAugmentation
    from uni_seg.config import resolve_config
    from uni_seg.train import spec_from_config

    cfg = resolve_config("demo", processed_dir=str(cache), aug_hed=0.3, aug_grayscale=0.25, aug_jpeg=50)
    assert StainAugmentation.from_config(resolve_config("demo")) == StainAugmentation()  # the defaults agree
    spec = spec_from_config(cfg, 1)
    train = spec.train_data.build()
    assert train.stain == StainAugmentation.from_config(cfg) and train.stain.hed == 0.3
    assert "augmentation" not in spec.val_data.kwargs  # validation tiles are never augmented
    with pytest.raises(ValueError, match="unknown augmentation setting.*'heed' \\(did you mean 'hed'\\?\\)"):
        CellCropDataset(cache, "train", 64, train=True, augmentation={"heed": 0.1})


def test_transforms_get_independent_seeds():
    # albumentations 2.0.8 gives every transform the same seed: H and V flips would fire together.
    image = np.arange(16, dtype=np.uint8).reshape(4, 4)
    pipeline = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
    outcomes = set()
    for seed in range(64):
        seed_transforms(pipeline, seed)
        outcomes.add(pipeline(image=image)["image"].tobytes())
    assert len(outcomes) == 4
