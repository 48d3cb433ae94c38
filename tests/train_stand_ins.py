"""The tiny training stand-ins (a few-conv model with the CellSegModel interface, an in-memory
dataset with the batch dict of CellCropDataset, a loss with the CellSegLoss interface) and the
spec that trains them, used by tests/test_train.py.

A plain helper module, not a fixture in conftest.py: the engine reaches these classes by name
(`Factory("train_stand_ins:TinySegModel")`) inside spawned DDP workers and killed `uni_seg.train`
subprocesses, which import them from `tests/` on their PYTHONPATH; pytest fixtures do not exist there.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from uni_seg import phases as phases_mod
from uni_seg import checkpoints as C
from uni_seg import devices

class TinySegModel(nn.Module):
    """The CellSegModel interface on a few convolutions (no dropout, no batch norm)."""

    def __init__(self, backbone: str = "tiny", weights: str = "none", n_classes: int = 4, decoder_channels: int = 8,
                 lora_rank: int | None = None, lora_alpha: float | None = None, pad_floats: int = 0,
                 announce: str | None = None) -> None:
        super().__init__()
        if announce:  # a process that builds the model says so (its pid, one line): an event a test waits for
            with open(announce, "a") as handle:
                handle.write(f"{os.getpid()}\n")
        self._config = dict(backbone=backbone, n_classes=n_classes, decoder_channels=decoder_channels,
                            pad_floats=pad_floats)
        self.backbone = nn.Conv2d(3, 8, 3, padding=1)
        self.decoder = nn.Sequential(nn.Conv2d(8, decoder_channels, 3, padding=1), nn.Tanh())
        self.np_head = nn.Conv2d(decoder_channels, 1, 1)
        self.hv_head = nn.Conv2d(decoder_channels, 2, 1)
        self.nc_head = nn.Conv2d(decoder_channels, n_classes, 1)
        if pad_floats:  # a big frozen buffer: checkpoints of a realistic size (kill tests)
            self.register_buffer("pad", torch.zeros(pad_floats))
        self.weights_source = "none" if weights == "none" else "imagenet"
        self.weights_provenance = {"kind": self.weights_source, "backbone": backbone, "repo": "timm/tiny",
                                   "revision": "abc123", "message": f"weights: {self.weights_source}"}
        self.lora_rank = self.lora_alpha = None
        if lora_rank:
            self.add_lora(lora_rank, lora_alpha)

    @property
    def config(self) -> dict:
        return {**self._config, "lora_rank": self.lora_rank, "lora_alpha": self.lora_alpha}

    def freeze_backbone(self) -> None:
        self.backbone.requires_grad_(False)

    def add_lora(self, rank: int, alpha: float) -> None:
        self.lora_rank, self.lora_alpha = rank, alpha
        self.lora_down = nn.Conv2d(8, rank, 1, bias=False)
        self.lora_up = nn.Conv2d(rank, 8, 1, bias=False)
        nn.init.zeros_(self.lora_up.weight)

    def param_groups(self, phase: int, lr_decoder: float, lr_lora: float | None = None,
                     weight_decay: float = 0.0) -> list[dict]:
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        groups = [dict(name="decoder", params=[p for n, p in named if not n.startswith("lora")], lr=lr_decoder,
                       weight_decay=weight_decay)]
        if phase == 2:
            groups.insert(0, dict(name="lora", params=[p for n, p in named if n.startswith("lora")], lr=lr_lora,
                                  weight_decay=weight_decay))
        return groups

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.backbone(x)
        if self.lora_rank:
            f = f + (self.lora_alpha / self.lora_rank) * self.lora_up(self.lora_down(f))
        d = self.decoder(f)
        return {"np": self.np_head(d), "hv": self.hv_head(d), "nc": self.nc_head(d)}


class TinyDataset(Dataset):
    """n items of the CellCropDataset batch dict; random flips from the global RNGs (which the
    engine seeds per (seed, epoch, index)). Images turn NaN at `nan_indices` or from `nan_from_epoch`."""

    def __init__(self, n: int = 8, size: int = 16, seed: int = 0, augment: bool = True,
                 nan_indices: tuple[int, ...] = (), nan_from_epoch: int | None = None) -> None:
        self.n, self.size, self.seed, self.augment = n, size, seed, augment
        self.nan_indices, self.nan_from_epoch = set(nan_indices), nan_from_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(self.seed * 1000 + i)
        image = rng.random((3, self.size, self.size), dtype=np.float32)
        if self.augment and np.random.random() < 0.5:
            image = image[:, :, ::-1]
        if self.augment and random.random() < 0.5:
            image = image[:, ::-1, :]
        image = np.ascontiguousarray(image) + 0.01 * torch.rand(1).item()
        fg = (image.mean(0) > 0.5).astype(np.float32)
        hv = np.stack([image[0] - 0.5, image[1] - 0.5]).astype(np.float32)
        nc = (fg * (1 + (image[2] > 0.5))).astype(np.int64)
        if i in self.nan_indices or (self.nan_from_epoch is not None and self.epoch >= self.nan_from_epoch):
            image = np.full_like(image, np.nan)
        return {"image": torch.from_numpy(image.astype(np.float32)), "np": torch.from_numpy(fg)[None],
                "hv": torch.from_numpy(hv), "nc": torch.from_numpy(nc), "inst": torch.from_numpy(nc)}


class TinyLoss(nn.Module):
    """CellSegLoss interface; every term a plain mean, so losses of equal-size halves average exactly."""

    def forward(self, out: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {"np": F.binary_cross_entropy_with_logits(out["np"], batch["np"]),
                 "hv": F.mse_loss(out["hv"], batch["hv"]),
                 "nc": F.cross_entropy(out["nc"], batch["nc"])}
        return parts["np"] + 2 * parts["hv"] + parts["nc"], parts


def tiny_spec(tmp: Path, phase: int = 1, *, epochs: int = 4, model: dict | None = None, data: dict | None = None,
              **phase_kw) -> phases_mod.TrainSpec:
    kw = dict(phase=phase, epochs=epochs, patience=10, batch_size=2, lr_decoder=1e-2, lr_lora=1e-3,
              warmup_epochs=1, restart_period=2, grad_accum_target=4, precision="fp32", seed=0)
    kw.update(phase_kw)
    if phase == 2:
        kw["schedule"] = "cosine"
    data = {"n": 8, **(data or {})}
    return phases_mod.TrainSpec(
        phase=phases_mod.PhaseConfig(**kw),
        model=devices.Factory(f"{__name__}:TinySegModel", model or {}),
        train_data=devices.Factory(f"{__name__}:TinyDataset", data),
        val_data=devices.Factory(f"{__name__}:TinyDataset", {"n": 4, "seed": 1, "augment": False}),
        loss=devices.Factory(f"{__name__}:TinyLoss"),
        checkpoint_dir=tmp / "checkpoints", results_dir=tmp / "results", working_scale=0.5,
        lora=(2, 4.0) if phase == 2 else None,
        init_checkpoint=tmp / "checkpoints" / "best_phase1.pth" if phase == 2 else None,
        device="cpu", progress=False, plot=False,
    )


def strip_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in phases_mod.TIMING_KEYS} for row in history]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return C.load_checkpoint(path)["model_state_dict"]
