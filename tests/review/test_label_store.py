"""The pyramidal label store of large slides: windows out, edits back, lower levels updated."""

import tracemalloc

import numpy as np
import pytest

from napari_ftu.boxes import box_at, corners
from napari_ftu.errors import EditError, InputError, OptionError
from napari_ftu.review import editing as E
from napari_ftu.review.label_store import LabelStore
from napari_ftu.review.session import ReviewSession


def test_window_edit_on_a_20000_px_store_changes_only_its_region(tmp_path):
    store = LabelStore.create(tmp_path / "labels.zarr", (20_000, 20_000), chunks=1024)
    objects = {1: (1000, 1000), 2: (10_240, 12_288), 3: (19_000, 300)}
    for obj, (y, x) in objects.items():
        box = box_at(y, x, 300, 300)
        window = store.read_window(box)
        window[50:250, 50:250] = obj
        store.write_window(box, window)
    assert store.n_stored_chunks(0) == 3  # sparse: only chunks holding objects exist
    before = [np.asarray(level[...]) for level in store.levels[3:]]  # small levels, to compare later
    l1_before = np.asarray(store.levels[1][0:2000, 0:2000])

    tracemalloc.start()
    y, x = 10_000, 12_000  # a window around object 2
    box = box_at(y, x, 1024, 1024)
    window = store.read_window(box)
    session = ReviewSession(window)
    assert set(session.review.rows) == {2}
    session.apply(E.dilate(window, 2, 20))
    session.apply(E.draw_polygon(window, [(700, 700), (700, 900), (900, 900), (900, 700)], reserved=[3]))
    regions = store.write_window(box, window)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"edit + save of a 1024 x 1024 window of a 20000 x 20000 store: peak {peak / 2**20:.1f} MiB traced")
    assert peak < 64 * 2**20  # the store is never read whole (one level 0 would be 1.6 GB)

    full = store.read_window(box)
    assert (full == window).all() and (full == 4).sum() == 201 * 201  # the new object got id 4 (corners included)
    for k, level in enumerate(store.levels):
        s = 2**k
        y0, x0, y1, x1 = corners(regions[k])
        assert (y0, x0) == (-(-y // s), -(-x // s))
        # level k is level 0 strided by 2**k over the edited region
        got = np.asarray(level[regions[k]])
        want = np.asarray(store.levels[0][y0 * s : y1 * s : s, x0 * s : x1 * s : s])
        assert (got == want).all() and (got == 4).any() == (y1 > y0 and x1 > x0)
    for k, old in enumerate(before, start=3):  # outside the region nothing moved
        new = np.asarray(store.levels[k][...])
        mask = np.ones(new.shape, bool)
        mask[regions[k]] = False
        assert (new[mask] == old[mask]).all()
        assert (new == 1).any() and (new == 3).any()  # the other objects are still there
    assert (np.asarray(store.levels[1][0:2000, 0:2000]) == l1_before).all() and (l1_before == 1).any()

    reopened = LabelStore.open(tmp_path / "labels.zarr")
    assert reopened.shape == (20_000, 20_000) and (reopened.read_window(box) == window).all()


def test_bad_windows_and_stores_are_refused(tmp_path):
    store = LabelStore.create(tmp_path / "l.zarr", (1000, 800))
    with pytest.raises(EditError, match="does not fit"):
        store.read_window(box_at(900, 0, 200, 100))
    with pytest.raises(EditError, match="2-D"):
        store.write_window(box_at(0, 0, 2, 2), np.zeros((2, 2, 2), np.uint32))
    with pytest.raises(EditError, match="does not fill"):  # a window is written back where it came from
        store.write_window(box_at(0, 0, 2, 2), np.zeros((2, 3), np.uint32))
    with pytest.raises(EditError, match="does not fit"):
        store.write_window(box_at(999, 0, 2, 2), np.zeros((2, 2), np.uint32))
    with pytest.raises(InputError, match="already exists"):
        LabelStore.create(tmp_path / "l.zarr", (10, 10))
    with pytest.raises(InputError, match="no such label store"):
        LabelStore.open(tmp_path / "missing.zarr")
    with pytest.raises(OptionError, match="integers"):
        LabelStore.create(tmp_path / "f.zarr", (10, 10), dtype="float32")
