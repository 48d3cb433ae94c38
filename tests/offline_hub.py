"""A Hugging Face hub without huggingface.co, for the tests of backbone weights.

`isolate_hub` points huggingface_hub at an empty cache and token store under the test's
temporary folder (so a developer's login or cache is never seen); `fill_hub_cache` lays files
out in the exact layout huggingface_hub itself reads (`models--ORG--NAME/refs/main`,
`snapshots/<revision>/...`, optionally `blobs/<sha256>` with relative symlinks, as a real
download leaves them); `go_offline` sets `HF_HUB_OFFLINE=1` as a compute node would. The
weights in those files come from timm's own constructors, never from uni_seg's code, so that
loading them checks uni_seg against timm rather than against itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

FAKE_TOKEN = "hf_FAKEtokenFORtestsONLY0123456789abcdef"
REVISION = "5e74787f2f9397c268594e9b443775071b4d16dc"


def isolate_hub(monkeypatch, tmp_path: Path) -> Path:
    """No token, an empty hub cache and token files under `tmp_path`; returns the cache folder."""
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "stored_tokens"))
    return tmp_path / "hub"


def go_offline(monkeypatch) -> None:
    """`HF_HUB_OFFLINE=1`, as huggingface_hub would have read it at import."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def save_weights(state: Mapping[str, torch.Tensor], path: Path) -> Path:
    """Write a state dict as `.safetensors`, or with `torch.save` for any other suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(dict(state), path)
    return path


def timm_config(architecture: str, num_features: int, img_size: int = 224) -> dict:
    """The `config.json` timm's `push_to_hub` writes beside a checkpoint (as in the DinoBloom repositories)."""
    return {"architecture": architecture, "num_classes": 0, "num_features": num_features, "global_pool": "token",
            "pretrained_cfg": {"tag": "dinobloom", "input_size": [3, img_size, img_size], "fixed_input_size": True,
                               "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 0}}


def fill_hub_cache(cache: Path, repo_id: str, weights: Mapping[str, Mapping[str, torch.Tensor]],
                   config: dict | None = None, revision: str = REVISION, blobs: bool = False) -> Path:
    """Lay `weights` (file name -> state dict) and `config` (as `config.json`) out as
    huggingface_hub caches `repo_id` at `revision` (which `refs/main` names); with `blobs`, each
    file lives in `blobs/<sha256>` and the snapshot holds a relative symlink to it, as after a
    real download. Returns the snapshot folder."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, state in weights.items():
        save_weights(state, snapshot / name)
    if config is not None:
        (snapshot / "config.json").write_text(json.dumps(config))
    if blobs:
        (root / "blobs").mkdir(exist_ok=True)
        for file in list(snapshot.iterdir()):
            blob = root / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
            os.replace(file, blob)
            file.symlink_to(os.path.relpath(blob, snapshot))
    return snapshot
