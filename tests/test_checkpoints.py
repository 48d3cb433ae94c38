"""`uni_seg.checkpoints`: a file that is not a whole checkpoint of ours is one line naming it."""

from __future__ import annotations

import pytest
import torch

from uni_seg import checkpoints


def test_issue21_case9_a_checkpoint_with_the_tag_but_no_weights_is_named_not_a_key_error(tmp_path):
    path = tmp_path / "tagged.pth"
    torch.save({"format": checkpoints.CHECKPOINT_FORMAT, "format_version": checkpoints.CHECKPOINT_VERSION,
                "model_config": {"backbone": "vit_tiny"}}, path)
    with pytest.raises(checkpoints.CheckpointError, match=r"tagged.pth has the uni_seg format tag but no model_state_dict"):
        checkpoints.load_model_from_checkpoint(path)
