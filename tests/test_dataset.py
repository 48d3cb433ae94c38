"""§2 uni_seg.dataset: the Dataset (training crops, evaluation tiles), the epoch sampler and the
loaders (workers in a script and inside a Jupyter kernel). The processed cache they read is the
`cache` fixture (tests/conftest.py)."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from uni_seg.targets import hv_maps
from uni_seg.dataset import CellCropDataset, EpochItems, EpochSampler, make_loader

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the Dataset
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
