"""What do the training masks draw? A dataset audit: per image/mask pair of a dataset folder (any
layout `uni_seg.data.find_dataset` reads), the drawn cells (mask components that do not touch the
image edge) and their median area, how many drawn components are platelet-sized (a fraction of that
median), and how many platelet-sized stained objects lie outside every drawn cell: dark, saturated
blobs (the platelets and free parasites of a Giemsa or Wright smear) that the masks call background.
A model trained on such masks learns to call them background too, whatever its backbone.

    .venv/bin/python bench/undrawn_objects.py DATA_DIR [--sheet FILE.png] [--max-crops 24]

Sizes are relative to the median drawn cell, so the audit reads any magnification: a platelet
(2-3 um) against a red cell (7-8 um) has about 0.05 to 0.25 of its area. Stained means more saturated and darker
than the median of the image's own background (the pixels away from every drawn cell) by
`STAIN_CONTRAST` levels, so a pale smear and a dark one are judged alike; the object must be compact
(`MIN_SOLIDITY`). It is a screen, not a detector: look at the sheet. `--sheet` writes the crops around the undrawn
objects (drawn cells outlined in green, the object in red) to a new file, never over an existing one.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from skimage.measure import label, regionprops

from uni_seg.data import DataError, find_dataset, read_image, read_mask

SMALL_FRACTION = (0.05, 0.25)  # platelet-sized: this range of the median drawn cell's area
STAIN_CONTRAST = 30  # 0-255 levels of saturation above, and of value below, the background's median
MIN_SOLIDITY = 0.8  # a platelet or parasite is compact; stain noise and debris are ragged
NEAR_DRAWN_PX = 12  # closer to a drawn cell, the shadow between touching cells reads as stained
CROP = 200


def touches_edge(bbox: tuple[int, int, int, int], shape: tuple[int, int]) -> bool:
    return bbox[0] == 0 or bbox[1] == 0 or bbox[2] == shape[0] or bbox[3] == shape[1]


def undrawn_stained(image: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    """(H, W) bool: stained pixels more than `NEAR_DRAWN_PX` from every drawn cell. `image` (H, W, 3)
    uint8 RGB, `drawn` (H, W) bool."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    kernel = np.ones((2 * NEAR_DRAWN_PX + 1,) * 2, np.uint8)
    near = cv2.dilate(drawn.astype(np.uint8), kernel).astype(bool)
    outside = ~near
    if outside.sum() < 100:
        return np.zeros_like(drawn)
    saturation, value = hsv[..., 1].astype(np.int16), hsv[..., 2].astype(np.int16)
    stained = (outside & (saturation > np.median(saturation[outside]) + STAIN_CONTRAST)
               & (value < np.median(value[outside]) - STAIN_CONTRAST))
    return cv2.morphologyEx(stained.astype(np.uint8), cv2.MORPH_OPEN, np.ones((5, 5), np.uint8)).astype(bool)


def drawn_cells(mask_path: Path) -> np.ndarray:
    """(H, W) bool: where the mask draws anything (a binary, label or colour mask)."""
    mask = read_mask(mask_path)
    return (mask.max(axis=2) if mask.ndim == 3 else mask) > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--sheet", type=Path, help="write crops around undrawn objects to this new PNG")
    parser.add_argument("--max-crops", type=int, default=24)
    args = parser.parse_args()
    if args.sheet is not None and args.sheet.exists():
        parser.error(f"--sheet {args.sheet} exists: give a new file name (nothing is overwritten)")
    if args.max_crops < 0:
        parser.error(f"--max-crops {args.max_crops} must be >= 0")
    try:
        pairs = [pair for partition in find_dataset(args.data_dir).values() for pair in partition]
        if not pairs:
            raise ValueError(f"{args.data_dir}: no image/mask pairs found")
        audit(pairs, args.data_dir, args.sheet, args.max_crops)
    except (DataError, FileNotFoundError, ValueError) as error:  # a folder or file that cannot be used
        parser.error(str(error))


def audit(pairs: list, data_dir: Path, sheet: Path | None, max_crops: int) -> None:
    """Print the audit of `pairs` (`uni_seg.data.ImagePair`s); write the crop sheet when asked."""
    # two passes over the files (sizes, then the screen) rather than every mask in memory: a
    # dataset of 1300 masks of 1600x1200 would hold gigabytes
    areas = np.array([r.area for pair in pairs for fg in [drawn_cells(pair.mask_path)]
                      for r in regionprops(label(fg)) if not touches_edge(r.bbox, fg.shape)])
    if areas.size == 0:
        raise ValueError(f"{data_dir}: no drawn cell lies inside its image (every mask is empty or touches only the edge)")
    median = float(np.median(areas))
    low, high = (f * median for f in SMALL_FRACTION)
    small_drawn = int(((areas >= low) & (areas <= high)).sum())

    undrawn, crops, images_with = 0, [], 0
    for pair in pairs:
        image, fg = read_image(pair.image_path), drawn_cells(pair.mask_path)
        if image.shape[:2] != fg.shape:
            raise ValueError(f"{pair.mask_path}: mask {fg.shape} does not match its image {image.shape[:2]} ({pair.image_path})")
        found = [r for r in regionprops(label(undrawn_stained(image, fg)))
                 if low <= r.area <= high and r.solidity >= MIN_SOLIDITY and not touches_edge(r.bbox, fg.shape)]
        undrawn += len(found)
        images_with += bool(found)
        wanted = found[:max(0, max_crops - len(crops))]
        if wanted:
            canvas = outlined(image, fg, wanted)
            crops += [crop_around(canvas, r.centroid) for r in wanted]
    print(f"{data_dir}: {len(pairs)} images; {areas.size} drawn cells inside the image, median area "
          f"{median:.0f} px (diameter ~{2 * np.sqrt(median / np.pi):.0f} px)")
    print(f"platelet-sized ({SMALL_FRACTION[0]:g}-{SMALL_FRACTION[1]:g} of the median, {low:.0f}-{high:.0f} px): "
          f"{small_drawn} drawn; {undrawn} stained objects outside every drawn cell, in {images_with} images")
    if sheet is not None and crops:
        columns = 6
        rows = [np.hstack(crops[i:i + columns] + [np.zeros_like(crops[0])] * (columns - len(crops[i:i + columns])))
                for i in range(0, len(crops), columns)]
        sheet.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(sheet), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))
        print(f"wrote {len(crops)} crops to {sheet}")


def outlined(image: np.ndarray, drawn: np.ndarray, objects: list) -> np.ndarray:
    """A copy of `image` ((H, W, 3) uint8 RGB) with the drawn cells outlined green and `objects`
    (skimage regions) red: one pass over the frame per image, each object's contour from its own box."""
    canvas = image.copy()
    contours, _ = cv2.findContours(drawn.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(canvas, contours, -1, (0, 200, 0), 2)
    for r in objects:
        contours, _ = cv2.findContours(r.image.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE,
                                       offset=(int(r.bbox[1]), int(r.bbox[0])))
        cv2.drawContours(canvas, contours, -1, (220, 0, 0), 2)
    return canvas


def crop_around(canvas: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    """A (CROP, CROP, 3) crop of `canvas` centred on `centre` (row, column), zero-padded at its edges
    (the window is clipped to the frame, so no padded copy of the whole frame is made per crop)."""
    crop = np.zeros((CROP, CROP, canvas.shape[2]), canvas.dtype)
    top, left = int(centre[0]) - CROP // 2, int(centre[1]) - CROP // 2
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + CROP, canvas.shape[0]), min(left + CROP, canvas.shape[1])
    if r1 > r0 and c1 > c0:
        crop[r0 - top:r1 - top, c0 - left:c1 - left] = canvas[r0:r1, c0:c1]
    return crop


if __name__ == "__main__":
    main()
