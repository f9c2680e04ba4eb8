"""The synthetic HPA-like cell images: seeded, and their truth agrees with their pixels."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_ftu.io.synthetic_cells import CLASSES, make_cells


@pytest.fixture(scope="module")
def cells():
    return make_cells(512, seed=11)


def test_seeded_and_deterministic(cells):
    again = make_cells(512, seed=11)
    other = make_cells(512, seed=12)
    np.testing.assert_array_equal(cells.image, again.image)
    np.testing.assert_array_equal(cells.cells, again.cells)
    assert cells.classes == again.classes
    assert not np.array_equal(cells.cells, other.cells)


def test_truth_is_consistent(cells):
    assert cells.image.shape == (512, 512, 4) and cells.image.dtype == np.uint8
    n = int(cells.cells.max())
    assert 20 <= n <= 60
    assert set(np.unique(cells.cells)) == set(range(n + 1))  # ids 1..n, none empty
    assert set(cells.classes) == set(range(1, n + 1)) and set(cells.classes.values()) <= set(CLASSES)
    # every cell is one piece holding exactly one nucleus, and the nucleus carries the cell's id
    inside = cells.nuclei > 0
    np.testing.assert_array_equal(cells.nuclei[inside], cells.cells[inside])
    for i, box in enumerate(ndi.find_objects(cells.cells), start=1):
        assert ndi.label(cells.cells[box] == i)[1] == 1
        nucleus = cells.nuclei[box] == i
        assert nucleus.any() and ndi.label(nucleus)[1] == 1
        assert nucleus.sum() < 0.8 * (cells.cells[box] == i).sum()  # a nucleus leaves cytoplasm around it
    # cells touch: some neighbouring pixels belong to two different cells
    a, b = cells.cells[:, :-1], cells.cells[:, 1:]
    assert ((a > 0) & (b > 0) & (a != b)).sum() > 100
    lut = cells.class_labels()
    assert lut.shape == cells.cells.shape and set(np.unique(lut[cells.cells == 0])) == {0}


def test_channels_show_what_the_truth_says(cells):
    red, green, blue, yellow = (cells.image[..., k].astype(float) for k in range(4))
    nucleus, cell = cells.nuclei > 0, cells.cells > 0
    cyto = cell & ~nucleus
    assert blue[nucleus].mean() > 4 * blue[~cell].mean() and blue[nucleus].mean() > 3 * blue[cyto].mean()
    assert red[cyto].mean() > 3 * red[~cell].mean() and yellow[cyto].mean() > 3 * yellow[~cell].mean()
    kind = cells.class_labels()  # 1 nucleoplasm, 2 cytosol, 3 negative
    assert green[nucleus & (kind == 1)].mean() > 3 * green[nucleus & (kind != 1)].mean()
    assert green[cyto & (kind == 2)].mean() > 3 * green[cyto & (kind != 2)].mean()
    assert green[cell & (kind == 3)].mean() < 0.5 * green[cell & (kind != 3)].mean()


def test_sizes_dtypes_and_cell_counts():
    c = make_cells(256, seed=3, n_cells=15, dtype=np.uint16)
    assert c.image.shape == (256, 256, 4) and c.image.dtype == np.uint16 and c.image.max() > 255
    assert 8 <= c.cells.max() <= 15
    counts = [make_cells(512, seed=s).cells.max() for s in (20, 21, 22)]
    assert len(set(counts)) > 1  # the seed draws the number of cells
    with pytest.raises(ValueError, match="at least 64"):
        make_cells(32)
