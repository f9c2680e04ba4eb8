"""Learning while reviewing, in a real viewer on a real frozen H&E patch: the Review dock's
learn section trains a round from the review, the new model appears in the Segment dock, the
queue re-sorts by doubt and the reviewed objects keep their pixels."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ftu.boxes import from_corners

napari = pytest.importorskip("napari")


@pytest.fixture
def reviewed(make_napari_viewer, qtbot, tmp_path, monkeypatch, shared_data):
    import imageio.v3 as iio

    monkeypatch.setenv("NAPARI_FTU_SESSIONS", str(tmp_path / "sessions"))
    rgb = iio.imread(shared_data / "sarder_frozen_kidney_glomeruli" / "images" / "slide_O27_2_589_736.png")[..., :3]
    viewer = make_napari_viewer()
    viewer.add_image(rgb, name="O27_2", scale=(3.0, 3.0), metadata={"um_per_px": 3.0})
    _, segment = viewer.window.add_plugin_dock_widget("napari-ftu", "Segment")
    _, review = viewer.window.add_plugin_dock_widget("napari-ftu", "Review")
    worker = segment.run()
    with qtbot.waitSignal(worker.finished, timeout=180_000):
        pass
    layer = viewer.layers["O27_2 FTUs"]
    assert review.layer is layer and review.session.review.rows, "the built-in model finds objects here"
    return viewer, segment, review, layer


def test_learn_from_my_reviews_updates_the_unreviewed_objects_only(reviewed, qtbot):
    viewer, segment, review, layer = reviewed
    session = review.session
    first = sorted(session.review.rows)[0]
    review.select([first])
    review.accept()
    kept = layer.data == first
    viewer.reset_view()
    whole = review.learning.view_box()  # the canvas shows the whole patch: the view covers it
    assert whole[0].start <= 0 and whole[1].start <= 0 and whole[0].stop >= 256 and whole[1].stop >= 256
    done = review.learning.mark_done(from_corners(0, 0, 128, 256))  # the top half: nothing else there
    assert done in session.done and review.learning.decisions() == 2
    left = layer.data[:128].copy()  # what the reviewer saw in the view marked done
    review.learning.seconds.value = 10
    worker = review.learning.learn()
    assert worker is not None and not review.learning.learn_button.enabled
    with qtbot.waitSignal(worker.finished, timeout=300_000):
        pass
    out = review.learning.model_path
    assert out is not None and out.name == "round-1" and (out / "model_card.json").is_file()
    assert str(out) in segment._paths  # the Segment dock offers the new model
    from napari_ftu.models.loading import load_model

    card = load_model(out, device="cpu").card
    assert card.notes["learned_from"]["slides"] == ["O27_2"] and card.notes["learned_from"]["reviewed_objects"] == 1
    assert np.array_equal(layer.data == first, kept)  # the reviewed object kept every pixel
    assert session.review.rows[first].status == "accepted"
    changed = layer.data[:128] != left
    assert not (changed & (layer.data[:128] > 0)).any()  # nothing new where the reviewer said "nothing else here"
    assert review.sort.value == "most doubtful first"
    from napari_ftu.review.active import doubt

    shown = [int(review.table.item(i, 0).text()) for i in range(review.table.rowCount())]
    rows = session.review.rows
    keys = [doubt(rows[i].confidence, session.review.threshold, session.review.agreement.get(i, 1.0)) for i in shown]
    assert keys == sorted(keys)
    review.undo()  # the new prediction is one undo step
    assert np.array_equal(layer.data == first, kept)


def test_a_cancelled_round_keeps_the_model_and_the_objects(reviewed, qtbot):
    viewer, segment, review, layer = reviewed
    session = review.session
    review.select([sorted(session.review.rows)[0]])
    review.reject()
    before = layer.data.copy()
    review.learning.seconds.value = 60
    worker = review.learning.learn()
    qtbot.waitUntil(lambda: review.learning.bar.value > 0, timeout=120_000)  # training has started
    review.learning.cancel()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    assert review.learning.model_path is None and review.learning.round == 0
    assert not any("round" in p for p in segment._paths)
    assert np.array_equal(layer.data, before)
    assert "cancelled" in review.learning.info.value


def test_the_train_dock_learns_only_what_was_reviewed(reviewed):
    """"Retrain on my corrections" on a layer under review: unreviewed objects are unknown, not
    truth, and validation takes whole reviewed objects."""
    from napari_ftu.training.data import start_from
    from napari_ftu.training.sparse import UNKNOWN

    viewer, segment, review, layer = reviewed
    session = review.session
    ids = sorted(session.review.rows)
    review.select(ids[:1])
    review.accept()
    train = review.retrain()
    assert train.labels_layer.value is layer
    card, _ = start_from(None)
    crops, val = train._data(card)
    assert crops and not val  # one reviewed object: too few to hold one out
    masks = [m for _, m in crops]
    assert any((m == 1).any() for m in masks) and all((m == UNKNOWN).any() for m in masks)
    assert sum(int((m == 1).sum()) for m in masks) < session.review.rows[ids[0]].area_px * 2.5  # one object only


def test_possible_misses_are_taken_or_dropped_with_one_key(reviewed):
    from napari_ftu.review.active import Candidate

    viewer, segment, review, layer = reviewed
    session, learning = review.session, review.learning
    free = np.zeros(layer.data.shape, bool)
    free[3:-3, 3:-3] = True
    from scipy import ndimage as ndi

    free &= ~ndi.binary_dilation(layer.data > 0, iterations=4)
    points = np.argwhere(free)
    a, b = points[0], points[-1]  # two places far apart, clear of every object
    boxes = [from_corners(y - 3, x - 3, y + 3, x + 3) for y, x in (a, b)]
    learning.misses = [Candidate(bx, np.ones((6, 6), bool), c) for bx, c in zip(boxes, (0.4, 0.3))]
    learning._show_misses()
    assert learning.accept_miss_button.enabled and f"{layer.name} possible misses" in viewer.layers
    assert learning.next_miss() is learning.misses[0]
    before = set(session.review.rows)
    learning.accept_miss()  # Shift+A: the region becomes an accepted object
    new = set(session.review.rows) - before
    assert len(new) == 1 and session.review.rows[new.pop()].status == "accepted"
    before = set(session.review.rows)
    learning.dismiss_miss()  # Shift+R: kept as a rejected object, background for the next round
    dropped = set(session.review.rows) - before
    assert len(dropped) == 1 and session.review.rows[dropped.pop()].status == "rejected"
    assert not layer.data[boxes[1]].any() and session.rejected[boxes[1]].all()
    assert not learning.misses and not learning.accept_miss_button.enabled
