"""Editing operations and the bounding-box undo history (Qt-free)."""

import numpy as np
import pytest
from skimage.draw import disk

from napari_ftu.errors import EditError
from napari_ftu.review import editing as E
from napari_ftu.review.undo import History, paint_delta


def _scene():
    """Three objects: a 40x40 square (1), two touching discs (2), a 2x2 speck (3)."""
    lab = np.zeros((200, 200), np.int32)
    lab[20:60, 20:60] = 1
    lab[disk((130, 60), 25, shape=lab.shape)] = 2
    lab[disk((130, 105), 25, shape=lab.shape)] = 2
    lab[180:182, 180:182] = 3
    return lab


def _apply(lab, edit):
    out = lab.copy()
    for p in edit.patches:
        out[p.box] = p.after
    return out


def test_operations_change_only_what_they_say():
    lab = _scene()
    merged = _apply(lab, E.merge(lab, [1, 3]))
    assert set(np.unique(merged)) == {0, 1, 2} and (merged[180:182, 180:182] == 1).all()
    deleted = _apply(lab, E.delete(lab, [2]))
    assert not (deleted == 2).any() and (deleted[lab != 2] == lab[lab != 2]).all()
    small = E.remove_small(lab, 10)
    assert small.removed == [3] and not (_apply(lab, small) == 3).any()
    grown = _apply(lab, E.dilate(lab, 1, 2))
    assert (grown == 1).sum() > (lab == 1).sum() and (grown[lab == 2] == 2).all()  # never over others
    shrunk = _apply(lab, E.erode(lab, 1, 2))
    assert (shrunk == 1).sum() == 36 * 36
    with pytest.raises(EditError, match="disappear"):
        E.erode(lab, 3, 2)
    holed = lab.copy()
    holed[30:40, 30:40] = 0
    assert (_apply(holed, E.fill_holes(holed, [1]))[30:40, 30:40] == 1).all()


def test_splits_give_new_ids_and_keep_pixels():
    lab = _scene()
    cut = E.split_by_line(lab, None, [(90, 82), (170, 82)], reserved=[7])
    out = _apply(lab, cut)
    assert cut.created == [8]  # above the reserved id of a rejected object
    assert ((out == 2) | (out == 8)).sum() == (lab == 2).sum()  # cut pixels join a part
    assert 0.4 < (out == 8).sum() / (lab == 2).sum() < 0.6
    ws = E.split_watershed(lab, [(130, 50), (130, 115)])
    out = _apply(lab, ws)
    left = out[130, 40:125]
    assert set(np.unique(out)) == {0, 1, 2, 3, 4}
    assert len(set(left[left > 0])) == 2  # one boundary between the two discs along the row
    with pytest.raises(EditError, match="inside one object"):
        E.split_watershed(lab, [(130, 50), (30, 30)])
    with pytest.raises(EditError, match="not cut"):
        E.split_by_line(lab, 1, [(0, 0), (10, 10)])


def test_draw_and_relabel():
    lab = _scene()
    drawn = E.draw_polygon(lab, [(150, 150), (150, 190), (190, 190)])
    out = _apply(lab, drawn)
    assert drawn.created == [4] and (out == 4).sum() > 300
    assert (out[180:182, 180:182] == 3).all()  # existing objects are kept
    gappy = np.where(lab == 2, 7, lab).astype(np.int32)
    rel = E.renumber(gappy)
    out = _apply(gappy, rel)
    assert rel.mapping == {3: 2, 7: 3}  # ids 1, 3, 7 become 1, 2, 3 in order
    assert ((out == 2) == (gappy == 3)).all() and ((out == 3) == (gappy == 7)).all()


def test_bad_input_is_refused():
    with pytest.raises(EditError, match="2-D"):
        E.merge(np.zeros((2, 2, 2), np.int32), [1, 2])
    with pytest.raises(EditError, match="not in the label image"):
        E.delete(_scene(), [42])
    with pytest.raises(EditError, match="at least two"):
        E.merge(_scene(), [1])


def test_history_undoes_and_redoes_exactly_and_is_capped():
    rng = np.random.default_rng(0)
    lab = _scene()
    states = [lab.copy()]
    history = History(max_steps=60)
    for k in range(70):
        y, x = rng.integers(0, 180, 2)
        edit = E.draw_polygon(lab, [(y, x), (y, x + 15), (y + 15, x + 15)], value=10 + k, overwrite=True)
        history.apply(lab, edit)
        states.append(lab.copy())
    assert len(history) == 60
    for k in range(60):
        history.undo(lab)
        assert (lab == states[69 - k]).all()
    assert history.undo(lab) is None and (lab == states[10]).all()  # the oldest 10 fell off
    for k in range(60):
        history.redo(lab)
    assert (lab == states[70]).all()
    history.undo(lab)
    history.apply(lab, E.delete(lab, [1]))
    assert not history.can_redo  # a new edit drops the redo branch


def test_history_memory_stays_small_on_a_big_label_image():
    lab = np.zeros((8192, 8192), np.uint32)  # 256 MB
    for k in range(60):
        lab[k * 100 : k * 100 + 80, 1000:1080] = k + 1
    history = History()
    for k in range(60):
        history.apply(lab, E.dilate(lab, k + 1, 3))
    per_step = history.nbytes / len(history)
    print(f"undo memory: {per_step:.0f} bytes per dilate step on an 8192 x 8192 uint32 image")
    assert len(history) == 60 and per_step < 2000  # compressed box deltas, not copies
    big = History(max_bytes=10_000)
    for k in range(60):
        big.apply(lab, E.erode(lab, k + 1, 1))
    assert big.nbytes <= 10_000 + max(s.nbytes for s in big._undo) and len(big) < 60


def test_paint_delta_from_real_napari_atoms():
    pytest.importorskip("napari")
    from napari.layers import Labels

    lab = _scene()
    layer = Labels(lab.copy())
    got = []
    layer.events.paint.connect(lambda e: got.append(paint_delta(layer.data, e.value)))
    original = layer.data.copy()
    layer.selected_label = 9
    layer.paint((30, 30), 9)  # the event comes before napari writes this click
    layer.fill((130, 60), 5)
    assert len(got) == 2
    (box1, before1, after1), (box2, before2, after2) = got
    assert (before1 == original[box1]).all() and (after1 == layer.data[box1]).all() and (after1 == 9).any()
    assert (after2 == layer.data[box2]).all() and (before2[after2 == 5] == 2).all()
