import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_ftu.formats.polygons import mask_to_polygons, rasterize, ring_area

shapely = pytest.importorskip("shapely")
from shapely.geometry import MultiPolygon, Polygon  # noqa: E402

masks = arrays(np.bool_, st.tuples(st.integers(1, 14), st.integers(1, 14)))


@settings(max_examples=300, deadline=None)
@given(masks)
def test_polygons_are_exact_and_valid(mask):
    polys = mask_to_polygons(mask)
    back = rasterize(polys, mask.shape)
    np.testing.assert_array_equal(back, mask)
    if not mask.any():
        assert polys == []
        return
    geom = MultiPolygon([Polygon(p[0], p[1:]) for p in polys])
    assert geom.is_valid, shapely.validation.explain_validity(geom)
    assert geom.area == mask.sum()
    for poly in polys:
        assert ring_area(poly[0]) > 0 and all(ring_area(h) < 0 for h in poly[1:])


def test_hole_and_diagonal_contacts():
    mask = np.zeros((7, 7), bool)
    mask[1:6, 1:6] = True
    mask[3, 3] = False  # a hole
    mask[6, 6] = True  # touches the square at one corner only: a second part
    polys = mask_to_polygons(mask)
    assert sorted(len(p) for p in polys) == [1, 2]
    assert sorted(Polygon(p[0], p[1:]).area for p in polys) == [1, 24]
