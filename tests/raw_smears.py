"""Small raw datasets in the Kaggle layout, written as a user would have them: smears with binary
masks, damaged on request. Shared by the data and cache tests (a plain module, not a test module)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from uni_seg.cache import CacheSummary, build_processed_cache


# ---------------------------------------------------------------- helpers: a tiny raw dataset
def smear(h: int = 60, w: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small RGB image and its binary RGB mask {0, 255}: two touching squares cut by a 2 px
    line, one apart, one speck."""
    rng = np.random.default_rng(seed)
    image = rng.integers(100, 230, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[5:25, 5:25] = 255
    mask[5:25, 27:47] = 255  # columns 25, 26: the separation line
    mask[35:55, 50:75] = 255
    mask[40, 10] = 255  # a 1-pixel speck
    return image, np.repeat(mask[..., None], 3, axis=2)


def write_png(path: Path, rgb_or_gray: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = cv2.cvtColor(rgb_or_gray, cv2.COLOR_RGB2BGR) if rgb_or_gray.ndim == 3 and rgb_or_gray.shape[2] == 3 else rgb_or_gray
    assert cv2.imwrite(str(path), arr)
    return path


def make_raw(root: Path, n_train: int = 6, n_test: int = 2, layout=("original", "mask"), jpg: tuple[str, ...] = ()) -> Path:
    for part, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            stem = f"{part}{i:02d}"
            image, mask = smear(seed=i + (100 if part == "test" else 0))
            ext = ".jpg" if stem in jpg else ".png"
            write_png(root / part / layout[0] / f"{stem}{ext}", image)
            write_png(root / part / layout[1] / f"{stem}.png", mask)
    return root


def corrupt(kind: str, path: Path) -> str:
    """Damage `path` (a valid PNG) in the named way; return the expected message pattern."""
    data = path.read_bytes()
    if kind == "zero-byte":
        path.write_bytes(b"")
        return "empty file"
    if kind == "truncated-png":
        path.write_bytes(data[: len(data) // 2])
        return "truncated PNG"
    if kind == "truncated-jpeg":
        ok, jpg = cv2.imencode(".jpg", cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
        path.write_bytes(jpg.tobytes()[:-300])
        return "truncated JPEG"
    if kind == "not-an-image":
        path.write_text("<html>this is not a picture</html>")
        return "not an image file"
    if kind == "corrupt-body":
        body = bytearray(data)
        body[60:400] = bytes(340)  # header and IEND intact, compressed data destroyed
        path.write_bytes(bytes(body))
        return "corrupt PNG|OpenCV cannot decode"
    raise AssertionError(kind)


def build(raw: Path, out: Path, **kw) -> CacheSummary:
    args = dict(working_scale=0.5, val_fraction=0.34, seed=1, min_area=10)
    args.update(kw)
    return build_processed_cache(raw, out, **args)


def squares(shape: tuple[int, int], corners: list[tuple[int, int, int, int]]) -> np.ndarray:
    """int32 label map: rectangle k (r0, c0, r1, c1) labelled k + 1, later ones on top."""
    inst = np.zeros(shape, np.int32)
    for k, (r0, c0, r1, c1) in enumerate(corners, start=1):
        inst[r0:r1, c0:c1] = k
    return inst
