"""§2 uni_seg.targets: HV/NP/NC targets, the augmentation pipeline, the Dataset and its loaders
(workers in a script and inside a Jupyter kernel)."""

from __future__ import annotations

import pickle
import random
import subprocess
import sys
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from uni_seg.data import build_processed_cache
from uni_seg.synthetic import generate_synthetic_dataset, render_synthetic_smear
from uni_seg.targets import hv_maps, targets_from_instances
from uni_seg.augment import CellAugmenter, seed_transforms
from uni_seg.dataset import CellCropDataset, EpochItems, EpochSampler, make_loader
from uni_seg.data import worker_context

ROOT = Path(__file__).resolve().parents[1]


def reference_hv(inst: np.ndarray) -> np.ndarray:
    """HoVer-Net's gen_instance_hv_map, one full-frame mask per instance (slow, obviously right)."""
    out = np.zeros((2, *inst.shape), np.float32)
    for i in np.unique(inst[inst > 0]):
        mask = inst == i
        cy, cx = ndi.center_of_mass(mask)
        cy, cx = int(cy + 0.5), int(cx + 0.5)
        ys, xs = np.nonzero(mask)
        for channel, offset in ((0, (xs - cx).astype(np.float32)), (1, (ys - cy).astype(np.float32))):
            neg, pos = offset < 0, offset > 0
            if neg.any():
                offset[neg] /= -offset[neg].min()
            if pos.any():
                offset[pos] /= offset[pos].max()
            out[channel, ys, xs] = offset
    return out


def label_map(seed: int, h: int = 90, w: int = 110) -> np.ndarray:
    """Overlapping ellipses with gaps in the ids, cells cut by the border, a one-pixel cell and a
    one-pixel-thick line."""
    rng = np.random.default_rng(seed)
    inst = np.zeros((h, w), np.int32)
    yy, xx = np.mgrid[0:h, 0:w]
    for k in range(12):
        cy, cx = rng.uniform(-5, h + 5), rng.uniform(-5, w + 5)
        a, b = rng.uniform(4, 14, 2)
        inst[((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2 <= 1] = 3 * k + 2
    inst[0, 0] = 1000
    inst[h - 1, 10:40] = 1001
    return inst


# ---------------------------------------------------------------- targets
@pytest.mark.parametrize("seed", range(6))
def test_hv_maps_match_the_hovernet_reference(seed):
    inst = label_map(seed)
    np.testing.assert_allclose(hv_maps(inst), reference_hv(inst), atol=1e-6)


def test_hv_maps_range_signs_and_background():
    inst = np.zeros((40, 50), np.int32)
    inst[5:26, 10:31] = 7  # 21 x 21 square: centre (15, 20)
    hv = hv_maps(inst)
    assert hv.dtype == np.float32 and hv.shape == (2, 40, 50)
    assert not hv[:, inst == 0].any()
    assert hv[0, 15, 10] == -1 and hv[0, 15, 30] == 1 and hv[0, 15, 20] == 0  # x: left negative
    assert hv[1, 5, 20] == -1 and hv[1, 25, 20] == 1 and hv[1, 15, 20] == 0  # y: top negative
    assert hv.min() >= -1 and hv.max() <= 1
    assert not hv_maps(np.zeros((5, 5), np.int32)).any()


def test_touching_cells_flip_sign_at_their_border():
    inst = np.zeros((20, 40), np.int32)
    inst[5:15, 5:20], inst[5:15, 20:35] = 1, 2
    hv = hv_maps(inst)
    assert hv[0, 10, 19] == 1 and hv[0, 10, 20] == -1


def test_targets_from_instances_shapes_and_dtypes():
    inst = label_map(1)
    cls = np.where(inst > 0, 2, 0).astype(np.uint8)
    cls[0, 1] = 3  # a class on background must not leak into NC
    t = targets_from_instances(inst, cls)
    assert t["np"].dtype == np.float32 and set(np.unique(t["np"]).tolist()) == {0.0, 1.0}
    assert t["hv"].shape == (2, *inst.shape) and t["nc"].dtype == np.int64
    assert (t["nc"] == np.where(inst > 0, 2, 0)).all()


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
    from uni_seg import data

    image, inst, cls = smear
    path = tmp_path / "smear.npy"
    data.save_processed_atomic(path, image, inst, cls.astype(np.int8))
    mapped, whole = data.open_processed(path), data.open_processed(path, in_memory=True)
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


def test_an_old_cache_file_is_refused_by_name(tmp_path):
    from uni_seg import data

    old = tmp_path / "a.npy"
    np.save(old, np.zeros((4, 4), np.uint8))
    with pytest.raises(data.DataError, match="a.npy.*rebuild the cache"):
        data.open_processed(old)


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


# ---------------------------------------------------------------- the Dataset
@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("targets")
    generate_synthetic_dataset(work / "raw", 5, 2, seed=11, image_size=(200, 260), cell_diameter=40.0)
    build_processed_cache(work / "raw", work / "processed", working_scale=0.5, val_fraction=0.2, seed=0, min_area=20)
    return work / "processed"  # working images are 100 x 130


def assert_item(item: dict, c: int) -> None:
    assert set(item) == {"image", "np", "hv", "nc", "inst"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, c, c)
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["np"].dtype == torch.float32 and item["np"].shape == (1, c, c)
    assert item["hv"].dtype == torch.float32 and item["hv"].shape == (2, c, c)
    assert item["nc"].dtype == torch.int64 and item["nc"].shape == (c, c)
    assert item["inst"].dtype == torch.int64 and item["inst"].shape == (c, c)
    np.testing.assert_array_equal(item["hv"].numpy(), hv_maps(item["inst"].numpy()))
    assert torch.equal(item["np"][0] > 0, item["inst"] > 0)


def test_train_items(cache):
    ds = CellCropDataset(cache, "train", 64, train=True, crops_per_image=3, seed=5)
    assert len(ds) == 4 * 3
    for i in range(len(ds)):
        assert_item(ds[i], 64)
    assert (ds[0]["nc"] > 0).any()


def test_training_crops_depend_only_on_seed_epoch_and_index(cache):
    ds = CellCropDataset(cache, "train", 64, train=True, crops_per_image=2, seed=5)
    resumed = CellCropDataset(cache, "train", 64, train=True, crops_per_image=2, seed=5)  # a fresh process, say
    a, b = ds[(3, 5)], resumed[(3, 5)]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(ds[(4, 5)]["image"], a["image"])
    ds.set_epoch(3)
    assert torch.equal(ds[5]["image"], a["image"])
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[(3, 5)]["hv"], a["hv"])


def test_eval_tiles_cover_every_image_deterministically(cache):
    ds = CellCropDataset(cache, "test", 64, train=False)
    covered = {k: np.zeros(s.working_hw, bool) for k, s in enumerate(ds.samples)}
    for k, top, left in ds.tiles:
        covered[k][top:top + 64, left:left + 64] = True
    assert all(c.all() for c in covered.values())
    assert len(ds) == len(ds.tiles) == 2 * 2 * 3  # 100 x 130 -> 2 x 3 tiles of 64
    first, again = ds[1], ds[1]
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert_item(first, 64)


def test_eval_pads_images_smaller_than_the_crop(cache):
    ds = CellCropDataset(cache, "val", 160, train=False)
    assert len(ds) == 1
    item = ds[0]
    assert_item(item, 160)
    assert not item["np"][0, 100:].any() and not item["image"][:, :, 130:].any()
    train = CellCropDataset(cache, "train", 160, train=True)
    assert_item(train[0], 160)


def test_index_out_of_range_and_missing_split(cache, tmp_path):
    ds = CellCropDataset(cache, "train", 64, train=True)
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(FileNotFoundError, match="no processed cache"):
        CellCropDataset(tmp_path, "train", 64, train=True)


# ---------------------------------------------------------------- sampler and loaders
def test_epoch_sampler_shards_and_reshuffles_reproducibly():
    s0, s1 = EpochSampler(10, True, seed=3, rank=0, world_size=3), EpochSampler(10, True, seed=3, rank=1, world_size=3)
    s2 = EpochSampler(10, True, seed=3, rank=2, world_size=3)
    shards = [list(s) for s in (s0, s1, s2)]
    assert all(len(x) == len(s0) == 4 for x in shards)
    assert {i for x in shards for _, i in x} == set(range(10)) and all(e == 0 for x in shards for e, _ in x)
    first = list(s0)
    s0.set_epoch(1)
    assert list(s0) != first and all(e == 1 for e, _ in s0)
    s0.set_epoch(0)
    assert list(s0) == first
    assert [i for _, i in EpochSampler(5, False, seed=0)] == [0, 1, 2, 3, 4]


def test_epoch_sampler_without_padding_gives_every_item_to_exactly_one_rank():
    shards = [list(EpochSampler(10, False, seed=3, rank=r, world_size=3, pad=False)) for r in range(3)]
    assert [len(EpochSampler(10, False, 3, r, 3, pad=False)) for r in range(3)] == [len(x) for x in shards] == [4, 3, 3]
    assert sorted(i for x in shards for _, i in x) == list(range(10))
    assert [i for _, i in shards[1]] == [1, 4, 7]
    assert list(EpochSampler(2, False, 0, rank=2, world_size=3, pad=False)) == []  # more ranks than items
    with pytest.raises(ValueError, match="rank 3"):
        EpochSampler(10, True, 0, rank=3, world_size=3)


class GlobalRandomDataset(torch.utils.data.Dataset):
    """Items drawn from the global generators (what `EpochItems` is for)."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([random.random(), np.random.random(), torch.rand(1).item()])


def test_epoch_items_seed_each_item_from_seed_epoch_index_and_restore_the_callers_state():
    ds = EpochItems(GlobalRandomDataset(), seed=5)
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    a = ds[(1, 2)]
    assert np.random.random() == before  # the caller's NumPy state is untouched
    b = [ds[(0, 0)], ds[(1, 2)]][1]
    assert torch.equal(a, b) and not torch.equal(a, ds[(2, 2)]) and not torch.equal(a, ds[(1, 3)])
    assert ds.dataset.epochs == [1, 0, 1, 2, 1]  # set_epoch called whenever the epoch changes
    assert torch.equal(pickle.loads(pickle.dumps(ds))[(1, 2)], a)


def batches(loader, epoch: int) -> list[dict]:
    loader.sampler.set_epoch(epoch)
    return list(loader)


def test_loader_workers_in_a_script_give_the_same_batches_as_no_workers(cache):
    ds = CellCropDataset(cache, "train", 64, train=True, crops_per_image=2, seed=1)
    serial = make_loader(ds, batch_size=3, shuffle=True, num_workers=0, seed=7)
    workers = make_loader(ds, batch_size=3, shuffle=True, num_workers=2, seed=7)
    for epoch in (0, 1):
        a, b = batches(serial, epoch), batches(workers, epoch)
        assert [len(x["image"]) for x in a] == [len(x["image"]) for x in b] == [3, 3, 2]
        for x, y in zip(a, b):
            assert x["image"].shape[1:] == (3, 64, 64) and x["nc"].shape[1:] == (64, 64)
            assert all(torch.equal(x[k], y[k]) for k in x)
    assert not torch.equal(batches(serial, 0)[0]["image"], batches(serial, 1)[0]["image"])


def test_loader_refuses_a_dataset_class_defined_in_a_notebook(cache):
    NotebookDataset = type("NotebookDataset", (CellCropDataset,), {"__module__": "__main__"})
    ds = NotebookDataset(cache, "train", 64, train=True)
    with pytest.raises(ValueError, match="defined in __main__"):
        make_loader(ds, batch_size=2, shuffle=True, num_workers=2, seed=0, multiprocessing_context="spawn")
    with pytest.raises(ValueError, match="NotebookDataset is defined in __main__"):  # also inside a wrapper
        make_loader(EpochItems(ds, 0), batch_size=2, shuffle=True, num_workers=2, seed=0,
                    multiprocessing_context="spawn")


def test_loader_shards_validation_without_duplicates_and_pads_training(cache):
    ds = CellCropDataset(cache, "val", 64, train=False)
    n = len(ds)
    val = [make_loader(ds, 2, False, 0, 0, rank=r, world_size=3, pad=False) for r in range(3)]
    assert sum(len(loader.sampler) for loader in val) == n
    assert sum(len(batch["image"]) for loader in val for batch in loader) == n
    train = [make_loader(ds, 2, True, 0, 0, rank=r, world_size=3) for r in range(3)]
    assert {len(loader.sampler) for loader in train} == {-(-n // 3)}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork is the script default on Linux only")
def test_workers_in_a_script_are_forked_so_an_unguarded_script_runs_once(cache, tmp_path):
    """Also after OpenCV's thread pool ran in the parent: a child forked while its threads
    sleep used to hang in the worker init's cv2.setNumThreads."""
    assert worker_context().get_start_method() == "fork"
    script = tmp_path / "unguarded.py"
    script.write_text(f"""
import os, sys, threading
import cv2, numpy as np
from uni_seg.dataset import CellCropDataset, make_loader
print("script started", flush=True)
cv2.GaussianBlur(np.zeros((2000, 2000, 3), np.uint8), (31, 31), 5)  # a parallel call: OpenCV's pool starts
def others_running():  # any thread but this one in state R (running), as /proc/self/task/*/stat says
    me = str(threading.get_native_id())
    return any(open(f"/proc/self/task/{{t}}/stat").read().rsplit(")", 1)[1].split()[0] == "R"
               for t in os.listdir("/proc/self/task") if t != me)
while others_running():  # ... and its threads go to sleep: the fork below comes once they all do, not after a clock
    os.sched_yield()
ds = CellCropDataset({str(cache)!r}, "train", 64, train=True, crops_per_image=2, seed=1)
loader = make_loader(ds, batch_size=2, shuffle=True, num_workers=2, seed=0)
print("batches", len(list(loader)), flush=True)
""")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("script started") == 1 and "batches 4" in run.stdout


def test_loader_workers_inside_a_jupyter_kernel(cache, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    code = f"""
import sys
import torch
from uni_seg.dataset import CellCropDataset, make_loader
ds = CellCropDataset({str(cache)!r}, "train", 64, train=True, crops_per_image=2, seed=1)
loader = make_loader(ds, batch_size=2, shuffle=True, num_workers=2, seed=0)
shapes = [tuple(batch["image"].shape) for batch in loader]
reference = [tuple(batch["image"].shape) for batch in make_loader(ds, 2, True, 0, 0)]
assert shapes == reference == [(2, 3, 64, 64)] * 4, shapes
print("workers ok", len(shapes))
"""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}},
                            ).execute()
    assert "workers ok 4" in "".join(out.get("text", "") for out in nb.cells[0].outputs)
