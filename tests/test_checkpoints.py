"""`uni_seg.checkpoints`: a file that is not a whole checkpoint of ours is one line naming it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uni_seg import checkpoints


def test_issue21_case9_a_checkpoint_with_the_tag_but_no_weights_is_named_not_a_key_error(tmp_path):
    path = tmp_path / "tagged.pth"
    torch.save({"format": checkpoints.CHECKPOINT_FORMAT, "format_version": checkpoints.CHECKPOINT_VERSION,
                "model_config": {"backbone": "vit_tiny"}}, path)
    with pytest.raises(checkpoints.CheckpointError, match=r"tagged.pth has the uni_seg format tag but no model_state_dict"):
        checkpoints.load_model_from_checkpoint(path)


# ----------------------------------------------------------- 11, 12. rejected checkpoints, one line
# Issue 16, faults met trying the project as a new user: a rejected checkpoint is one line naming the file and what is wrong.
class _Foreign:
    pass


@pytest.mark.parametrize("make, expected", [
    (lambda p: torch.save({"a": _Foreign()}, p), "holds a Python object of type"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(3000)), "not a PyTorch checkpoint"),
    (lambda p: p.write_bytes(b""), "empty or ends early"),
    (lambda p: p.mkdir(), "is a folder, not a checkpoint file"),
])
def test_a_rejected_checkpoint_is_one_line_naming_the_file_and_what_is_wrong(tmp_path, make, expected):
    path = tmp_path / "model.pth"
    make(path)
    with pytest.raises(checkpoints.CheckpointError) as error:
        checkpoints.load_checkpoint(path)
    message = str(error.value)
    assert str(path) in message and expected in message and "\n" not in message
    assert "weights_only" not in message and "False" not in message


def test_any_random_bytes_are_named_not_a_checkpoint(tmp_path):
    """Whatever error torch's reader meets in random bytes (an unpickling error, or a KeyError,
    IndexError or UnicodeDecodeError from the legacy reader), the reason says what the file is."""
    path = tmp_path / "model.pth"
    for seed in range(40):
        path.write_bytes(np.random.default_rng(seed).bytes(256))
        with pytest.raises(checkpoints.CheckpointError) as error:
            checkpoints.load_checkpoint(path)
        assert "not a PyTorch checkpoint" in str(error.value) or "damaged" in str(error.value), (seed, str(error.value))


# ----------------------------------------------------------- a setting added to the architecture later
def test_a_checkpoint_from_before_the_image_skip_resumes_as_a_model_without_one():
    older = {"phase": 1, "working_scale": 0.5, "model_config": {"backbone": "vit_tiny", "n_classes": 4}}
    current = {"backbone": "vit_tiny", "n_classes": 4, "image_skip_channels": 0}
    checkpoints.check_compatible(older, "old.pth", phase=1, model_config=current, working_scale=0.5)
    with pytest.raises(checkpoints.CheckpointError, match=r"old.pth comes from another configuration: image_skip_channels"):
        checkpoints.check_compatible(older, "old.pth", phase=1, model_config={**current, "image_skip_channels": 16},
                                     working_scale=0.5)


def test_a_checkpoint_from_a_newer_version_names_the_setting_it_does_not_know(tmp_path):
    path = tmp_path / "newer.pth"
    torch.save({"format": checkpoints.CHECKPOINT_FORMAT, "format_version": checkpoints.CHECKPOINT_VERSION,
                "model_config": {"backbone": "vit_tiny", "n_classes": 4, "future_stem": 8}, "model_state_dict": {}}, path)
    with pytest.raises(checkpoints.CheckpointError, match=r"newer.pth describes its model with future_stem, which this "
                                                          r"version of uni_seg does not know.*update uni_seg"):
        checkpoints.load_model_from_checkpoint(path)
