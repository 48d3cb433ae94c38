"""Stand-ins for the model in tests of inference: small modules that honour its contract
(float32 (B, 3, H, W) RGB in [0, 1] -> dict "np" (B, 1), "hv" (B, 2), "nc" (B, C) logits), and
the images they segment.

* `PointwiseModel`: every output pixel depends only on the same input pixel, so tiled
  blending must reproduce a single whole-image pass exactly, whatever the tile size;
* `EquivariantModel`: labels the bright blobs of the tile it is given and returns their exact
  HV maps, so its output commutes with flips/rotations and TTA must give the plain output;
* `DarknessModel`: a cell is a pixel darker than the background, HV flat, pointwise (the slide
  tests and bench/bench_slide.py).

A plain helper module, not fixtures in conftest.py: scripts that tests run in subprocesses
(tests/shard_stand_in_python.py, the worker script of tests/test_infer.py) and a benchmark
import these classes by name.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi


class PointwiseModel(torch.nn.Module):
    def __init__(self, n_classes: int = 4):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(6.0))
        self.n_classes = n_classes

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
        nc = torch.cat([r, g, b, 1 - r][: self.n_classes], dim=1) * self.scale
        return {"np": (r - 0.5) * self.scale, "hv": torch.cat([2 * g - 1, 2 * b - 1], dim=1), "nc": nc}


def exact_hv(inst: np.ndarray) -> np.ndarray:
    """HV maps with float centroids: exactly equivariant under flips and quarter turns."""
    hv = np.zeros((2,) + inst.shape, dtype=np.float64)
    n = int(inst.max())
    if n == 0:
        return hv.astype(np.float32)
    ys, xs = np.indices(inst.shape, dtype=np.float64)
    ids = np.arange(1, n + 1)
    fg = inst > 0
    area = np.bincount(inst.ravel(), minlength=n + 1)
    for ch, coord in enumerate((xs, ys)):
        centre = np.bincount(inst.ravel(), weights=coord.ravel(), minlength=n + 1) / np.maximum(area, 1)
        d = coord - centre[inst]
        hi = np.zeros(n + 1)
        lo = np.zeros(n + 1)
        hi[1:] = ndi.maximum(d, inst, ids)
        lo[1:] = ndi.minimum(d, inst, ids)
        pos = np.where(d > 0, d / np.where(hi[inst] > 0, hi[inst], 1), 0)
        neg = np.where(d < 0, d / np.where(lo[inst] < 0, -lo[inst], 1), 0)
        hv[ch] = np.where(fg, pos + neg, 0)
    return hv.astype(np.float32)


class EquivariantModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outs = {"np": [], "hv": [], "nc": []}
        for tile in x.detach().cpu().numpy():
            fg = tile[0] > 0.5
            inst, _ = ndi.label(fg, structure=np.ones((3, 3)))
            outs["np"].append(np.where(fg, 8.0, -8.0)[None])
            outs["hv"].append(exact_hv(inst))
            outs["nc"].append(np.stack([~fg * 5.0, tile[1] * 5, tile[2] * 5, tile[0]]))
        return {k: torch.from_numpy(np.stack(v).astype(np.float32)).to(x.device) + 0 * self.dummy for k, v in outs.items()}


class DarknessModel(torch.nn.Module):
    """Stand-in: a cell is a pixel darker than the background (a stained cell on a bright
    smear), HV flat (each blob one cell), class from the red/blue balance. Pointwise."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(30.0))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        grey = x.mean(dim=1, keepdim=True)
        r, b = x[:, 0:1], x[:, 2:3]
        nc = torch.cat([1 - grey, r, b, 0.5 * (r + b)], dim=1) * 4
        return {"np": (0.8 - grey) * self.gain, "hv": torch.zeros_like(x[:, :2]), "nc": nc}


def disks_image(shape, centres, radius, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 image with bright disks (channel 0) on a dark background, and their labels."""
    rng = np.random.default_rng(seed)
    ys, xs = np.indices(shape)
    inst = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, 1):
        inst[(ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2] = i
    image = rng.integers(0, 60, size=shape + (3,)).astype(np.uint8)
    image[inst > 0, 0] = 230
    image[inst > 0, 1] = rng.integers(100, 255, size=int((inst > 0).sum()))
    return image, inst
