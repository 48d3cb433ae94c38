"""§8's model file (`uni-seg package`): what it holds, that it reads safely and segments as its
checkpoint does, and that it is much smaller than a training checkpoint."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from stand_ins import disks_image
from uni_seg import cli
from uni_seg.checkpoints import MODEL_FILE_FORMAT, CheckpointError, load_checkpoint, store_postproc
from uni_seg.package import package_model
from uni_seg.postproc import PostprocParams
from uni_seg.segmenter import Segmenter, untrained_checkpoint

RUN = dict(device="cpu", precision="fp32", tile_size=64, overlap=16, postproc={"fg_threshold": 0.45, "min_area": 5})


def training_checkpoint(path: pathlib.Path) -> pathlib.Path:
    """An untrained model saved as training saves it: with AdamW's moments for every weight,
    the scheduler, the random states and a history."""
    untrained_checkpoint(path, working_scale=0.5, cell_diameter=40.0)
    ckpt = torch.load(path, weights_only=True)
    from uni_seg.segmenter import Segmenter as _S  # the model, rebuilt from the file
    model = _S.from_checkpoint(path, device="cpu").model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    out = model(torch.rand(1, 3, 32, 32))
    (out["np"].mean() + out["hv"].mean() + out["nc"].mean()).backward()
    optimizer.step()
    ckpt.update(model_state_dict=model.state_dict(), optimizer_state_dict=optimizer.state_dict(),
                history=[{"epoch": 1, "val_loss": 1.0}], checkpoint_id="trained-1")
    torch.save(ckpt, path)
    return path


def test_a_model_file_segments_as_its_checkpoint_and_is_much_smaller(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = training_checkpoint(tmp_path / "best_phase2.pth")
    store_postproc(checkpoint, PostprocParams(min_area=12).as_dict(), tuned_on="val (3 images)")
    cli.main(["package", str(checkpoint), "-o", "model.pt"])
    model_file = tmp_path / "model.pt"
    doc = torch.load(model_file, weights_only=True)  # plain tensors and values only
    assert doc["format"] == MODEL_FILE_FORMAT and "optimizer_state_dict" not in doc and "rng" not in doc
    assert doc["working_scale"] == 0.5 and doc["cell_diameter"] == 40.0 and doc["class_scheme"]["name"] == "colour"
    assert doc["postproc"]["params"]["min_area"] == 12 and doc["postproc"]["tuned_on"] == "val (3 images)"
    assert len(doc["normalisation"]["mean"]) == 3 and doc["checkpoint_id"] == "trained-1"
    ratio = checkpoint.stat().st_size / model_file.stat().st_size
    assert ratio > 2.5, f"the model file is only {ratio:.2f}x smaller"
    image, _ = disks_image((120, 150), [(40, 40), (80, 100)], 18)
    from_checkpoint = Segmenter.from_checkpoint(checkpoint, **RUN)(image)
    from_file = Segmenter.from_checkpoint(model_file, **RUN)(image)
    np.testing.assert_array_equal(from_file.labels, from_checkpoint.labels)
    np.testing.assert_array_equal(from_file.scores, from_checkpoint.scores)
    packaged = Segmenter.from_checkpoint(model_file, device="cpu")
    assert packaged.postproc.min_area == 12 and packaged.working_scale == 0.5
    with pytest.raises(SystemExit):  # never over an existing file unless asked
        cli.main(["package", str(checkpoint), "-o", "model.pt"])
    with pytest.raises(CheckpointError, match="packaged model file"):  # not a training state to resume
        load_checkpoint(model_file)


class RunsCode:
    """A pickle that would create a file when loaded (what a malicious model file does)."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_a_file_that_would_run_code_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "model.pt"
    torch.save({"format": MODEL_FILE_FORMAT, "format_version": 1, "payload": RunsCode(marker)}, evil)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused without unpickling"):
        Segmenter.from_checkpoint(evil, device="cpu")
    with pytest.raises(CheckpointError):
        package_model(evil, tmp_path / "out.pt")
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_half_precision_weights_halve_the_file_and_still_segment(tmp_path):
    checkpoint = untrained_checkpoint(tmp_path / "tiny.pth")
    full, _ = package_model(checkpoint, tmp_path / "full.pt")
    half, _ = package_model(checkpoint, tmp_path / "half.pt", weights_dtype="float16")
    assert half.stat().st_size < 0.55 * full.stat().st_size
    assert torch.load(half, weights_only=True)["weights_dtype"] == "float16"
    image, _ = disks_image((120, 150), [(40, 40), (80, 100)], 18)
    a = Segmenter.from_checkpoint(full, **RUN)(image)
    b = Segmenter.from_checkpoint(half, **RUN)(image)
    assert next(Segmenter.from_checkpoint(half, device="cpu").model.parameters()).dtype == torch.float32
    assert (a.labels > 0).sum() > 0 and ((a.labels > 0) == (b.labels > 0)).mean() > 0.99
    with pytest.raises(ValueError, match="weights_dtype='int8'"):
        package_model(checkpoint, tmp_path / "x.pt", weights_dtype="int8")
