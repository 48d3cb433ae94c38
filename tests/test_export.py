"""`uni_seg.export`: every cell's GeoJSON polygons are valid, on the real masks and on shapes made to
break them (a diagonal contact, a hole)."""
from __future__ import annotations

import numpy as np
import pytest


# ----------------------------------------------------------------------- 17. valid GeoJSON polygons
# Issue 16, faults met trying the project as a new user: valid GeoJSON polygons.
def test_exported_polygons_are_valid_for_every_cell_of_the_real_masks(real_subset):
    shapely = pytest.importorskip("shapely")

    from uni_seg.data import parse_mask_to_instances, read_mask
    from uni_seg.export import cell_polygons

    checked = 0
    for mask in sorted(real_subset.glob("*/mask/*.png")):
        inst = parse_mask_to_instances(read_mask(mask), source=mask)[0]
        for cell, pieces in cell_polygons(inst).items():
            geometry = shapely.MultiPolygon([(p[0], p[1:]) for p in pieces])
            assert geometry.is_valid, (mask.name, cell, shapely.is_valid_reason(geometry))
            assert abs(geometry.area - (inst == cell).sum()) <= 0.1 * (inst == cell).sum()
            checked += 1
    assert checked > 7000


def test_a_cell_pinched_to_a_diagonal_contact_and_a_cell_with_a_hole_give_valid_polygons():
    shapely = pytest.importorskip("shapely")
    from uni_seg.export import cell_polygons

    inst = np.zeros((20, 20), np.int32)
    inst[2:6, 2:6] = 1
    inst[6:10, 6:10] = 1  # touches the first square only at a corner
    inst[12:19, 12:19] = 2
    inst[15, 15] = 0  # a hole
    polygons = cell_polygons(inst)
    assert shapely.Polygon(polygons[1][0][0], polygons[1][0][1:]).is_valid
    assert len(polygons[2][0]) == 2  # a shell and one hole ring
    assert shapely.Polygon(polygons[2][0][0], polygons[2][0][1:]).is_valid
