"""What a review keeps for learning: rejected objects' pixels, regions marked done, a new
prediction that never touches a reviewed object, the active queue and its possible misses."""

import math

import numpy as np
import pytest

from napari_ftu.boxes import from_corners
from napari_ftu.review import active
from napari_ftu.review.autosave import SessionStore
from napari_ftu.review.saved import keep_saved_reviews, read_session, saved_sessions
from napari_ftu.review.session import ReviewSession
from napari_ftu.review.table import Row


def _labels():
    labels = np.zeros((200, 300), np.int32)
    labels[20:60, 20:60] = 1
    labels[100:140, 100:150] = 2
    labels[150:190, 230:280] = 3
    labels[20:50, 200:240] = 4
    return labels


def _reviewed():
    session = ReviewSession(_labels())
    session.accept([1])
    session.reject([2])
    session.mark_done(from_corners(0, 180, 80, 300))
    return session


def test_a_new_prediction_replaces_only_the_unreviewed_objects():
    session = _reviewed()
    accepted = session.labels == 1
    new = np.zeros_like(session.labels)
    new[25:70, 25:70] = 1  # over the accepted object: dropped
    new[105:135, 105:145] = 2  # where the reviewer rejected an object: dropped
    new[10:40, 190:215] = 3  # in the region marked done: dropped
    new[150:195, 225:285] = 4  # replaces the unreviewed object 3
    new[60:90, 20:60] = 5  # new, touching the accepted one: clipped to the free pixels
    session.repredict(new, {4: ("FTU", 0.4), 5: ("FTU", 0.7)})
    assert np.array_equal(session.labels == 1, accepted) and session.review.rows[1].status == "accepted"
    assert session.review.rows[2].status == "rejected" and not (session.labels == 2).any()
    assert 3 not in session.review.rows  # the old unreviewed object is gone
    fresh = {i: r for i, r in session.review.rows.items() if r.status == "unreviewed" and i != 4}
    assert sorted(round(r.confidence, 2) for r in fresh.values()) == [0.4, 0.7]
    assert all(i > 4 for i in fresh)  # new ids: never one a rejected or reviewed row holds
    assert not session.labels[10:40, 190:200].any()
    assert (session.labels == 4).sum() == 30 * 40  # unreviewed, but in a view marked done: left as it was
    assert session.review.rows[4].status == "unreviewed"
    session.undo()
    assert np.array_equal(session.labels, np.where(_labels() == 2, 0, _labels()))
    assert {i: r.status for i, r in session.review.rows.items()} == {1: "accepted", 2: "rejected", 3: "unreviewed",
                                                                     4: "unreviewed"}


def test_rejected_pixels_and_done_regions_survive_the_autosave(tmp_path):
    session = _reviewed()
    store = SessionStore(tmp_path, "labels")
    store.save(session)
    store.release()
    saved = read_session(store.path)
    assert np.array_equal(saved.rejected == 2, _labels() == 2)
    assert saved.done == [from_corners(0, 180, 80, 300)]
    restored = saved.into(ReviewSession(saved.labels, saved.review))
    assert restored.done == session.done and np.array_equal(restored.rejected, session.rejected)


def test_a_damaged_done_list_is_a_session_error(tmp_path):
    import io
    import json
    import zipfile

    from napari_ftu.errors import SessionError

    session = _reviewed()
    store = SessionStore(tmp_path, "labels")
    store.save(session)
    store.release()
    with zipfile.ZipFile(store.path) as zf:
        parts = {n: zf.read(n) for n in zf.namelist()}
    meta = json.loads(np.lib.format.read_array(io.BytesIO(parts["meta.npy"])).tobytes())
    meta["done"] = [[1, 2, 3]]
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.frombuffer(json.dumps(meta).encode(), np.uint8))
    parts["meta.npy"] = buf.getvalue()
    with zipfile.ZipFile(store.path, "w") as zf:
        for n, data in parts.items():
            zf.writestr(n, data)
    with pytest.raises(SessionError, match="done region"):
        read_session(store.path)


def test_segment_keeps_the_saved_review_of_a_slide(tmp_path):
    slide = tmp_path / "slide.png"
    slide.write_bytes(b"")  # only its name matters here: the review sits in slide.png.ftu/
    session = _reviewed()
    store = SessionStore(tmp_path / "slide.png.ftu", "slide FTUs")
    store.save(session)
    store.release()
    assert saved_sessions(slide) == [(store.path, slide)]
    prediction = np.zeros((200, 300), np.int32)
    prediction[30:70, 30:70] = 7  # mostly over the accepted object
    prediction[110:130, 110:140] = 8  # on the rejected one
    prediction[150:190, 20:60] = 9  # somewhere new
    kept, dropped = keep_saved_reviews(prediction, slide, 1.0, next_id=10)
    assert (kept, dropped) == (1, 2)
    assert np.array_equal(prediction == 10, _labels() == 1)  # the accepted outline, under a fresh id
    assert (prediction[150:190, 20:60] == 9).all() and not (prediction == 8).any()
    half = np.zeros((100, 150), np.int32)  # labels on a grid twice as coarse
    half[75:95, 10:30] = 9
    assert keep_saved_reviews(half, slide, 2.0, next_id=10)[0] == 1
    assert (half[10:30, 10:30] == 10).all()


def _row(i, conf, y=0.0, x=0.0):
    return Row(i, "FTU", 10, 10.0, conf, "unreviewed", from_corners(0, 0, 1, 1), (y, x))


def test_the_active_order_puts_the_most_doubtful_first():
    rows = [_row(1, 0.95), _row(2, 0.52), _row(3, math.nan), _row(4, 0.75), _row(5, 0.3)]
    # 0.3 lies 0.4 of the way from the threshold to 0, 0.75 half way to 1
    assert [r.id for r in active.order(rows, "most doubtful first", 0.5)] == [2, 5, 4, 1, 3]
    # two models disagreeing on a sure object make it doubtful
    assert [r.id for r in active.order(rows, "most doubtful first", 0.5, {1: 0.0})][0] == 1
    assert [r.id for r in active.order(rows, "low confidence first")] == [5, 2, 4, 1, 3]


def test_possible_misses_are_sub_threshold_regions_outside_every_object():
    prob = np.zeros((100, 100), np.float32)
    prob[10:30, 10:30] = 0.4  # almost an object
    prob[50:70, 50:70] = 0.9  # an object already
    prob[80:82, 80:82] = 0.45  # too small
    prob[10:30, 60:80] = 0.1  # too faint
    labels = np.zeros((100, 100), np.int32)
    labels[50:70, 50:70] = 1
    found = active.possible_misses(prob, labels, 0.5, min_area_px=20)
    assert len(found) == 1 and found[0].area_px == 400 and found[0].confidence == pytest.approx(0.4)
    blocked = np.zeros((100, 100), bool)
    blocked[10:30, 10:30] = True  # the reviewer already said no there
    assert active.possible_misses(prob, labels, 0.5, 20, blocked=blocked) == []
