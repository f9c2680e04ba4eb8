"""Review table, review session (statuses follow edits, undo restores both) and autosave."""

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from napari_ftu.review import editing as E
from napari_ftu.review.autosave import DEFAULT_INTERVAL_S, Autosaver, SessionStore, session_folder
from napari_ftu.review.session import ReviewSession
from napari_ftu.review.table import Review


def _scene():
    lab = np.zeros((120, 120), np.int32)
    lab[10:20, 10:20] = 1  # 100 px
    lab[40:60, 40:60] = 2  # 400 px
    lab[80:110, 80:110] = 3  # 900 px
    return lab


def _features():
    return {"index": [1, 2, 3], "class": ["glomerulus"] * 3, "confidence": [0.9, 0.4, 0.7]}


def test_table_sorts_filters_and_counts():
    review = Review.from_labels(_scene(), um_per_px=0.5, features=_features())
    assert [r.id for r in review.table("low confidence first")] == [2, 3, 1]
    assert [r.id for r in review.table("large first")] == [3, 2, 1]
    assert review.rows[3].area_um2 == pytest.approx(900 * 0.25)
    assert [r.id for r in review.table(max_confidence=0.75)] == [2, 3]
    review.set_status([2], "accepted")
    assert [r.id for r in review.table(status="unreviewed")] == [1, 3]
    assert review.summary().startswith("1 / 3 reviewed")
    order = [r.id for r in review.table("low confidence first")]
    assert review.next_unreviewed(2, order) == 3 and review.next_unreviewed(3, order) == 1
    assert review.next_unreviewed(3, order, -1) == 1  # wraps backwards past the accepted one
    with pytest.raises(ValueError, match="unknown status"):
        review.set_status([1], "maybe")


def test_a_queue_built_before_the_segmentation_wrote_its_features_takes_them():
    """A dock opened before the run builds the queue from bare labels; the features and the
    pixel size that come after fill it in, and a reviewer's class is kept."""
    review = Review.from_labels(_scene())  # no features, no pixel size
    assert all(math.isnan(r.confidence) for r in review.rows.values())
    assert review.rows[2].area_um2 == review.rows[2].area_px == 400
    review.set_status([3], "accepted")
    review.set_class([3], "vessel")
    assert review.adopt(_features(), um_per_px=2.0)
    assert [review.rows[i].confidence for i in (1, 2, 3)] == [0.9, 0.4, 0.7]
    assert [r.id for r in review.table("low confidence first")] == [2, 3, 1]
    assert review.rows[2].area_um2 == 400 * 2.0**2 and review.um_per_px == 2.0
    assert review.rows[1].cls == "glomerulus" and review.rows[3].cls == "vessel"  # reviewed: the reviewer's class
    assert not review.adopt(_features(), um_per_px=2.0)  # nothing new
    assert not review.adopt(None, None) and review.um_per_px == 2.0


def test_statuses_follow_edits_and_undo_restores_them():
    lab = _scene()
    s = ReviewSession(lab, Review.from_labels(lab, 0.5, _features()))
    s.accept([1])
    s.reject([2])
    assert not (lab == 2).any() and s.review.rows[2].status == "rejected"
    assert s.review.summary().startswith("2 / 3 reviewed")
    s.apply(E.split_by_line(lab, 3, [(75, 95), (115, 95)], s.reserved()))
    new = max(s.review.rows)
    assert new == 4 and s.review.rows[3].status == "edited" and s.review.rows[4].status == "edited"
    assert s.review.rows[3].confidence == 0.7 and math.isnan(s.review.rows[4].confidence)
    s.set_class([4], "vessel")
    assert s.review.rows[4].cls == "vessel"
    for _ in range(3):
        s.undo()
    assert (lab == _scene()).all()
    assert s.review.rows[2].status == "unreviewed" and 4 not in s.review.rows
    assert s.review.rows[1].status == "accepted"
    s.redo()
    assert s.review.rows[2].status == "rejected" and not (lab == 2).any()


def test_a_new_prediction_replaces_the_objects_as_one_undo_step():
    """Train in the Annotate dock: every object replaced, with the prediction's class and confidence."""
    lab = _scene()
    s = ReviewSession(lab, Review.from_labels(lab, 0.5, _features()))
    s.accept([1])
    s.reject([2])
    new = np.zeros_like(lab)
    new[5:30, 5:30], new[70:90, 10:30] = 1, 2
    s.replace(new, {1: ("cytosol", 0.8), 2: ("nucleoplasm", None), 7: ("absent", 0.1)}, name="train: cells")
    assert (lab == new).all() and sorted(s.review.rows) == [1, 2]
    one, two = s.review.rows[1], s.review.rows[2]
    assert (one.cls, one.confidence, one.status, one.area_px) == ("cytosol", 0.8, "unreviewed", 625)
    assert two.cls == "nucleoplasm" and math.isnan(two.confidence)
    assert s.review.features() == {"index": [1, 2], "class": ["cytosol", "nucleoplasm"],
                                   "confidence": [0.8, pytest.approx(float("nan"), nan_ok=True)]}
    s.undo()  # the old pixels and rows, the rejected one included
    assert (lab == np.where(_scene() == 2, 0, _scene())).all()
    assert {i: r.status for i, r in s.review.rows.items()} == {1: "accepted", 2: "rejected", 3: "unreviewed"}
    assert s.review.features()["index"] == [1, 3]  # a rejected object is not in the labels
    s.redo()
    assert (lab == new).all() and s.review.rows[1].cls == "cytosol"
    with pytest.raises(E.EditError, match="differ"):
        s.replace(new[:-1])
    with pytest.raises(E.EditError, match="do not fit"):
        ReviewSession(np.zeros((4, 4), np.uint8)).replace(np.full((4, 4), 300, np.int32))


def test_relabel_keeps_each_object_s_review():
    lab = np.where(_scene() == 3, 9, _scene()).astype(np.int32)
    s = ReviewSession(lab)
    s.accept([9])
    s.apply(E.renumber(lab))
    assert s.review.rows[3].status == "accepted" and 9 not in s.review.rows


def test_session_round_trip_and_folders(tmp_path):
    lab = _scene()
    s = ReviewSession(lab, Review.from_labels(lab, 0.5, _features()))
    s.accept([1])
    s.apply(E.dilate(lab, 3, 2))
    store = SessionStore(tmp_path / "slide.tif.ftu", "slide FTUs")
    store.save(s, {"layer": "slide FTUs"})
    saved = store.load()
    assert (saved.labels == lab).all()
    assert {i: r.status for i, r in saved.review.rows.items()} == {1: "accepted", 2: "unreviewed", 3: "edited"}
    assert saved.review.rows[2].confidence == 0.4 and saved.meta["layer"] == "slide FTUs"
    (tmp_path / "slide.tif").write_bytes(b"")
    assert session_folder("slide", tmp_path / "slide.tif") == tmp_path / "slide.tif.ftu"
    assert session_folder("x/../y", None, project=tmp_path) == tmp_path / "x_.._y.ftu"
    store.path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read the saved session"):
        store.load()


def test_autosaver_saves_only_changes_after_the_interval(tmp_path):
    now = [0.0]
    lab = _scene()
    s = ReviewSession(lab)
    saver = Autosaver(s, SessionStore(tmp_path), interval=30, clock=lambda: now[0])
    assert DEFAULT_INTERVAL_S <= 30
    assert not saver.tick()  # nothing changed
    s.accept([1])
    now[0] = 29.0
    assert not saver.tick() and not saver.store.exists()
    now[0] = 30.0
    assert saver.tick() and saver.store.exists() and not saver.dirty
    now[0] = 100.0
    assert not saver.tick()  # still nothing new
    s.accept([2])
    assert saver.save_now()  # image change: save at once


CHILD = r"""
import hashlib, json, sys, time
import numpy as np
from napari_ftu.review import editing as E
from napari_ftu.review.autosave import Autosaver, SessionStore
from napari_ftu.review.session import ReviewSession

folder, log_path, interval = sys.argv[1], sys.argv[2], float(sys.argv[3])
lab = np.zeros((600, 600), np.int32)
s = ReviewSession(lab)
saver = Autosaver(s, SessionStore(folder, "FTUs"), interval=interval)
log = open(log_path, "a")
k = 0
while True:
    k += 1
    y, x = (k * 37) % 560, (k * 53) % 560
    s.apply(E.draw_polygon(lab, [(y, x), (y, x + 30), (y + 30, x + 30), (y + 30, x)], value=k, overwrite=True))
    if k % 3 == 0 and k in s.review.rows:
        s.accept([k])
    digest = hashlib.sha1(lab.tobytes()).hexdigest()
    log.write(json.dumps({"k": k, "t": time.time(), "gen": s.generation, "sha": digest}) + "\n")
    log.flush()
    saver.tick()
    time.sleep(0.02)
"""


def test_killed_session_loses_at_most_the_autosave_interval(tmp_path):
    interval = 1.0
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    log_path = tmp_path / "log.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "s.ftu"), str(log_path), str(interval)],
                            env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(0.5)
        if log_path.exists() and len(log_path.read_text().splitlines()) > 0:
            first = json.loads(log_path.read_text().splitlines()[0])["t"]
            if time.time() - first > 3.7:  # several autosaves, then kill between two of them
                break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.endswith("}")]
    saved = SessionStore(tmp_path / "s.ftu", "FTUs").load()
    assert saved is not None, "no autosave happened before the kill"
    match = [e for e in entries if e["gen"] == saved.meta["generation"]]
    assert match, "the saved session is not a state the session went through"
    assert hashlib.sha1(saved.labels.tobytes()).hexdigest() == match[0]["sha"]  # exactly that state
    lost = entries[-1]["t"] - match[0]["t"]
    print(f"killed after {len(entries)} edits; the restore lacks the last {lost:.2f} s (interval {interval} s)")
    assert lost <= interval + 0.5
    k = match[0]["k"]
    accepted = {i for i, r in saved.review.rows.items() if r.status == "accepted"}
    assert accepted and all(i % 3 == 0 and i <= k for i in accepted)  # review statuses came back too
    assert not list((tmp_path / "s.ftu").glob("*.part*"))  # no torn temporary file is mistaken for a save
