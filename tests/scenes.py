"""Label maps of known cells for the metric and post-processing tests: discs, random overlapping
scenes and plausible predictions of them (a plain helper module, not a test module)."""

from __future__ import annotations

import numpy as np


def disk_scene(shape=(200, 260), cells=((50, 50, 18), (50, 84, 18), (140, 70, 25), (120, 190, 40), (40, 200, 9))):
    """A small label map: two touching discs, lone discs of several sizes (ids 1..N)."""
    yy, xx = np.indices(shape)
    inst = np.zeros(shape, np.int32)
    for i, (cy, cx, r) in enumerate(cells, start=1):
        d = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        inst[d & (inst == 0)] = i
    return inst


def random_scene(rng: np.random.Generator, shape=(96, 128), n=14, r=(4, 11)) -> np.ndarray:
    """Overlapping discs painted in random order: ids 1..n (some may vanish), int32."""
    yy, xx = np.indices(shape)
    inst = np.zeros(shape, np.int32)
    for i in range(1, n + 1):
        cy, cx, rad = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.integers(*r)
        inst[(yy - cy) ** 2 + (xx - cx) ** 2 <= rad * rad] = i
    return inst


def perturb(rng: np.random.Generator, inst: np.ndarray) -> np.ndarray:
    """A plausible prediction: shifted cells, one merge, one missed cell, false positives."""
    pred = np.roll(inst, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1)).copy()
    ids = [i for i in np.unique(pred) if i]
    if len(ids) > 3:
        pred[pred == ids[0]] = ids[1]  # merge
        pred[pred == ids[2]] = 0  # miss
    yy, xx = np.indices(inst.shape)
    for k in range(2):  # false positives
        cy, cx = rng.integers(0, inst.shape[0]), rng.integers(0, inst.shape[1])
        pred[((yy - cy) ** 2 + (xx - cx) ** 2 <= 16) & (pred == 0)] = 1000 + k
    return pred


def scored_dataset(rng: np.random.Generator, n: int = 3):
    """n scenes with perturbed predictions: (true maps, true class maps, predicted maps, predicted
    class vectors, predicted scores), as `evaluate_predictions` takes them."""
    ti, tc, pi, pc, ps = [], [], [], [], []
    for _ in range(n):
        t = random_scene(rng, n=10)
        p = perturb(rng, t)
        t_cls = np.where(t > 0, 1 + (t % 3), 0).astype(np.uint8)  # class map (as parse_mask_to_instances gives)
        p_vec = np.zeros(int(p.max()) + 1, np.int64)  # class vector by id (as classify_instances gives)
        p_vec[1:] = 1 + rng.integers(0, 3, p_vec.size - 1)
        ti.append(t), tc.append(t_cls), pi.append(p), pc.append(p_vec)
        ps.append(rng.random(int(p.max()) + 1))
    return ti, tc, pi, pc, ps
