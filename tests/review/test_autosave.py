"""Review autosave never loses a saved session: one file per full-resolution window, damaged or
mismatching files kept aside (renamed) and reported, one writer per session (a second viewer, in
this process or another, saves beside it), leftovers of killed saves cleaned."""

import io
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from napari_ftu.boxes import box_at, from_corners
from napari_ftu.review import editing as E
from napari_ftu.review.autosave import Autosaver, SessionError, SessionStore, pending_windows
from napari_ftu.review.session import ReviewSession


def _scene(shape=(120, 120)):
    lab = np.zeros(shape, np.int32)
    lab[10:20, 10:20] = 1
    lab[40:60, 40:60] = 2
    lab[80:110, 80:110] = 3
    return lab


def _edited_session(shape=(120, 120), offset=(0, 0)):
    s = ReviewSession(_scene(shape), offset=offset)
    s.accept([1])
    s.apply(E.dilate(s.labels, 2, 3))
    return s


def _asides(folder, kind):
    return sorted(p for p in Path(folder).iterdir() if f".{kind}-" in p.name)


# --- one session per window ---------------------------------------------------------------------

def test_each_full_resolution_window_keeps_its_own_session(tmp_path):
    """Editing window B of a label store never destroys window A's unsaved edits."""
    a = _edited_session((512, 512), offset=(14_900, 14_900))
    store_a = SessionStore(tmp_path, "big (store) window", window=box_at(14_900, 14_900, 512, 512))
    store_a.save(a)
    b = _edited_session((300, 400), offset=(0, 1000))
    b.reject([3])
    window_b = box_at(0, 1000, 300, 400)
    store_b = SessionStore(tmp_path, "big (store) window", window=window_b)
    assert store_b.restore((300, 400), (0, 1000)) is None  # B has no session yet, and A's file is not B's
    store_b.save(b)
    assert store_a.path != store_b.path
    again = SessionStore(tmp_path, "big (store) window", window=box_at(14_900, 14_900, 512, 512))
    saved = again.restore((512, 512), (14_900, 14_900))
    assert (saved.labels == a.labels).all() and saved.review.rows[1].status == "accepted"
    assert saved.offset == (14_900, 14_900)
    saved_b = SessionStore(tmp_path, "big (store) window", window=window_b).restore((300, 400), (0, 1000))
    assert (saved_b.labels == b.labels).all() and saved_b.review.rows[3].status == "rejected"



def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def test_window_sessions_keep_their_file_format(tmp_path):
    """Boxes are slices in memory, but a window's file is still ``<layer>@<y>_<x>_<h>x<w>`` and
    the table's boxes are still corners: an autosave written before the change (built here by
    hand, byte layout as written then) loads, and a new save is read back the same way."""
    labels = _scene((300, 400))
    corners = {1: [10, 10, 20, 20], 2: [40, 40, 60, 60], 3: [80, 80, 110, 110]}
    rows = [{"id": i, "cls": "FTU", "area_px": int((labels == i).sum()), "area_um2": float((labels == i).sum()),
             "confidence": None, "status": "accepted" if i == 2 else "unreviewed", "box": box,
             "centroid": [(box[0] + box[2] - 1) / 2, (box[1] + box[3] - 1) / 2]} for i, box in corners.items()]
    meta = {"offset": [0, 1000], "saved_at": 1.0, "generation": 3, "in_store_generation": 2}
    old = tmp_path / "big_store_window@0_1000_300x400.session.npz"
    with zipfile.ZipFile(old, "w") as zf:
        zf.writestr("labels.npy", _npy(labels))
        for name, doc in [("review", {"um_per_px": None, "default_class": "FTU", "rows": rows}), ("meta", meta)]:
            zf.writestr(f"{name}.npy", _npy(np.frombuffer(json.dumps(doc).encode(), np.uint8)))
    assert pending_windows(tmp_path, "big (store) window") == [box_at(0, 1000, 300, 400)]
    store = SessionStore(tmp_path, "big (store) window", window=box_at(0, 1000, 300, 400))
    assert store.path == old
    saved = store.restore((300, 400), (0, 1000))
    assert (saved.labels == labels).all() and saved.offset == (0, 1000)
    assert saved.review.rows[2].box == from_corners(40, 40, 60, 60) == np.s_[40:60, 40:60]
    assert (labels[saved.review.rows[2].box] == 2).all()

    session = ReviewSession(saved.labels, saved.review, offset=saved.offset)
    session.accept([1])
    store.save(session)
    with np.load(old, allow_pickle=False) as data:
        written = json.loads(bytes(data["review"]).decode())
    assert {r["id"]: r["box"] for r in written["rows"]} == corners
    assert store.restore((300, 400), (0, 1000)).review.rows[1].status == "accepted"


@pytest.mark.parametrize("shape, offset", [((100, 120), (0, 0)), ((120, 120), (0, 64))])
def test_a_session_of_another_shape_or_offset_is_kept_aside_and_reported(tmp_path, shape, offset):
    old = _edited_session()
    SessionStore(tmp_path, "FTUs").save(old)
    before = (tmp_path / "FTUs.session.npz").read_bytes()
    store = SessionStore(tmp_path, "FTUs")
    with pytest.raises(SessionError, match="kept it as FTUs.session.npz.mismatch-") as info:
        store.restore(shape, offset)
    assert info.value.aside.read_bytes() == before  # the old edits, byte for byte
    fresh = ReviewSession(_scene(shape), offset=offset)
    saver = Autosaver(fresh, store)
    fresh.accept([2])
    assert saver.save_now()
    assert (store.load().labels == fresh.labels).all()
    assert info.value.aside.read_bytes() == before  # not overwritten by the new session
    assert _asides(tmp_path, "mismatch") == [info.value.aside]


# --- damaged files ------------------------------------------------------------------------------

def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _text(obj) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode(), np.uint8)


def _good(tmp_path) -> bytes:
    store = SessionStore(tmp_path / "good", "FTUs")
    store.save(_edited_session())
    return store.path.read_bytes()


def _huge_header() -> bytes:
    """A valid zip whose labels.npy claims 10^6 × 10^6 int64 (8 TB) in a few bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<i8", "fortran_order": False,
                                                  "shape": (1_000_000, 1_000_000)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("labels.npy", b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + b"\0" * 64)
        zf.writestr("review.npy", b"")
        zf.writestr("meta.npy", b"")
    return buf.getvalue()


DAMAGE = {
    "truncated zip": lambda good: good[: len(good) // 2],
    "empty file": lambda good: b"",
    "not a zip": lambda good: b"not a zip at all",
    "flipped bytes in the compressed labels": lambda good: good[:200] + bytes(b ^ 0xFF for b in good[200:400])
    + good[400:],
    "no labels": lambda good: _npz(review=_text({"rows": []}), meta=_text({})),
    "float labels": lambda good: _npz(labels=np.zeros((120, 120)), review=_text({"rows": []}), meta=_text({})),
    "3-D labels": lambda good: _npz(labels=np.zeros((1, 120, 120), np.int32), review=_text({"rows": []}),
                                    meta=_text({})),
    "review is a list": lambda good: _npz(labels=_scene(), review=_text([1, 2]), meta=_text({})),
    "review not JSON": lambda good: _npz(labels=_scene(), review=np.frombuffer(b"\xff{", np.uint8), meta=_text({})),
    "bad status": lambda good: _npz(labels=_scene(), review=_text({"rows": [
        {"id": 1, "cls": "x", "area_px": 1, "area_um2": 1, "status": "eaten", "box": [0, 0, 1, 1],
         "centroid": [0, 0]}]}), meta=_text({})),
    "meta a list": lambda good: _npz(labels=_scene(), review=_text({"rows": []}), meta=_text([0])),
    "offset text": lambda good: _npz(labels=_scene(), review=_text({"rows": []}), meta=_text({"offset": "ab"})),
    "a pickled object array": lambda good: _npz(labels=np.array([None, 1], object), review=_text({"rows": []}),
                                                meta=_text({})),
}


def test_a_session_file_claiming_terabytes_is_refused_before_allocating(tmp_path):
    store = SessionStore(tmp_path, "FTUs")
    store.path.write_bytes(_huge_header())
    tracemalloc.start()
    try:
        with pytest.raises(SessionError, match="1000000 x 1000000"):
            store.load()  # no shape to compare with: the size check refuses it
        with pytest.raises(SessionError, match="kept it as FTUs.session.npz.mismatch-"):
            store.restore((120, 120))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"{peak / 2**20:.1f} MiB traced"


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_session_is_kept_aside_reported_and_the_layer_still_autosaves(tmp_path, damage):
    """Corrupt file -> open -> edit -> autosave: the edits are saved in a new file and the damaged
    copy is still there, byte-identical. Every kind of damage is one SessionError naming the file."""
    folder = tmp_path / "slide.tif.ftu"
    folder.mkdir()
    damaged = DAMAGE[damage](_good(tmp_path))
    (folder / "FTUs.session.npz").write_bytes(damaged)
    store = SessionStore(folder, "FTUs")
    with pytest.raises(SessionError, match="cannot read the saved session"):
        store.load()
    tracemalloc.start()
    try:
        with pytest.raises(SessionError, match=r"FTUs.session.npz: cannot read .* kept it as "
                                               r"FTUs.session.npz.damaged-\d{8}-\d{6}") as info:
            store.restore((120, 120))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20, f"{damage}: {peak / 2**20:.0f} MiB traced while refusing it"
    aside = info.value.aside
    assert aside.parent == folder and aside.read_bytes() == damaged
    assert not store.path.exists()
    session = ReviewSession(_scene())  # the layer gets a fresh session ...
    now = [0.0]
    saver = Autosaver(session, store, interval=1, clock=lambda: now[0])
    session.apply(E.delete(session.labels, [3]))  # ... whose edits are recorded ...
    session.accept([1])
    now[0] = 1.0
    assert saver.tick()  # ... and saved
    saved = SessionStore(folder, "FTUs").load()
    assert (saved.labels == session.labels).all() and 3 not in saved.labels
    assert saved.review.rows[1].status == "accepted"
    assert aside.read_bytes() == damaged and _asides(folder, "damaged") == [aside]  # never overwritten
    session.accept([2])
    assert saver.save_now() and aside.read_bytes() == damaged


def test_two_damaged_files_in_one_second_both_stay(tmp_path):
    store = SessionStore(tmp_path, "FTUs")
    for content in (b"first", b"second"):
        store.path.write_bytes(content)
        with pytest.raises(SessionError):
            SessionStore(tmp_path, "FTUs").restore((120, 120))
    assert sorted(p.read_bytes() for p in _asides(tmp_path, "damaged")) == [b"first", b"second"]


def test_a_file_changed_on_disk_since_it_was_read_is_kept_aside_before_saving(tmp_path):
    """A writer that ignored the lock (an older version, a copy from a backup) is not overwritten."""
    session = _edited_session()
    store = SessionStore(tmp_path, "FTUs")
    assert store.restore((120, 120)) is None
    saver = Autosaver(session, store)
    saver.save_now()
    other = _npz(labels=_scene(), review=_text({"rows": []}), meta=_text({"offset": [0, 0]}))
    store.path.write_bytes(other)
    session.accept([3])
    saver.save_now()
    [aside] = _asides(tmp_path, "conflict")
    assert aside.read_bytes() == other
    assert any("changed by another program" in n for n in store.take_notices())
    assert store.load().review.rows[3].status == "accepted"


# --- one writer per session ----------------------------------------------------------------------

def test_a_second_writer_in_this_process_saves_beside_the_first(tmp_path):
    first, second = SessionStore(tmp_path, "FTUs"), SessionStore(tmp_path, "FTUs")
    assert first.claim() is None and first.owner
    warning = second.claim()
    assert warning and "another viewer is saving this review" in warning and str(os.getpid()) in warning
    assert not second.owner and second.save_path != first.path
    s1, s2 = _edited_session(), ReviewSession(_scene())
    s2.reject([1, 2, 3])
    first.save(s1)
    second.save(s2)
    first.save(s1)
    assert (first.load().labels == s1.labels).all()  # the first viewer's session, not overwritten
    other = np.load(second.save_path)
    assert not other["labels"].any()  # the second viewer's edits are kept too, in their own file
    assert SessionStore(tmp_path, "FTUs").claim()  # still held
    first.release()
    third = SessionStore(tmp_path, "FTUs")
    assert third.claim() is None and third.owner
    assert json.loads(third.lock_path.read_text())["token"] == third._token


def test_the_same_folder_spelt_differently_is_the_same_session(tmp_path, monkeypatch):
    (tmp_path / "s").mkdir()
    monkeypatch.chdir(tmp_path)
    first = SessionStore(Path("s"), "FTUs")
    assert first.claim() is None
    assert SessionStore(tmp_path / "s" / ".." / "s", "FTUs").claim()  # held: not taken for a dropped lock


def test_a_store_that_saves_without_claiming_still_never_overwrites_the_holder(tmp_path):
    holder = SessionStore(tmp_path, "FTUs")
    holder.save(s := _edited_session())
    before = holder.path.read_bytes()
    late = SessionStore(tmp_path, "FTUs")
    late.save(ReviewSession(_scene()))
    assert holder.path.read_bytes() == before and late.save_path.exists()
    assert any("another viewer" in n for n in late.take_notices())
    assert s.generation


def test_a_lock_left_by_a_dropped_store_of_this_process_is_taken_over(tmp_path):
    lost = SessionStore(tmp_path, "FTUs")
    lost.claim()
    lock = json.loads(lost.lock_path.read_text())
    lost._finalizer.detach()  # as if the lock file outlived its store (no release ran)
    del lost
    assert json.loads((tmp_path / "FTUs.session.lock").read_text()) == lock
    store = SessionStore(tmp_path, "FTUs")
    assert store.claim() is None and store.owner


HOLDER = r"""
import sys, time
import numpy as np
from napari_ftu.review.autosave import Autosaver, SessionStore
from napari_ftu.review.session import ReviewSession
store = SessionStore(sys.argv[1], "FTUs")
assert store.claim() is None
lab = np.zeros((120, 120), np.int32); lab[5:50, 5:50] = 9
s = ReviewSession(lab); s.accept([9])
store.save(s)
print("saved", flush=True)
time.sleep(600)
"""


def test_a_second_process_on_the_same_slide_is_warned_and_a_dead_holder_is_taken_over(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saved"
        before = (tmp_path / "FTUs.session.npz").read_bytes()
        store = SessionStore(tmp_path, "FTUs")
        saved = store.restore((120, 120))
        assert saved.review.rows[9].status == "accepted"  # the other viewer's last save is shown
        [warning] = store.take_notices()
        assert f"process {proc.pid}" in warning and str(store.save_path) in warning
        mine = ReviewSession(saved.labels.copy(), saved.review)
        saver = Autosaver(mine, store)
        mine.reject([9])
        assert saver.save_now()
        assert (tmp_path / "FTUs.session.npz").read_bytes() == before  # the first process's file is untouched
        assert np.load(store.save_path)["labels"].max() == 0
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    after = SessionStore(tmp_path, "FTUs")  # the holder was killed: its lock is stale
    assert after.claim() is None and after.owner and after.save_path == after.path
    assert json.loads(after.lock_path.read_text())["pid"] == os.getpid()


# --- kill -9 during a save -----------------------------------------------------------------------

SLOW_SAVER = r"""
import sys, time
import numpy as np
from napari_ftu.review import autosave
from napari_ftu.review.autosave import SessionStore
from napari_ftu.review.session import ReviewSession

def stuck(fh, **arrays):
    fh.write(b"PK half a session")
    fh.flush()
    print("writing", flush=True)
    time.sleep(600)

autosave._write_npz = stuck
SessionStore(sys.argv[1], sys.argv[2]).save(ReviewSession(np.zeros((50, 50), np.int32)))
"""


def _stuck_saver(folder, name):
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SAVER, str(folder), name], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def test_a_save_killed_midway_leaves_a_temporary_that_the_next_open_removes(tmp_path):
    folder = tmp_path / "slide.tif.ftu"
    good = SessionStore(folder, "FTUs")
    good.save(_edited_session())
    before = good.path.read_bytes()
    killed = _stuck_saver(folder, "FTUs")
    live = _stuck_saver(folder, "other layer")  # another viewer, still writing
    try:
        parts = {p.name: p for p in folder.iterdir() if ".part" in p.name}
        assert len(parts) == 2
        killed.kill()
        killed.wait()
        dead_part = next(p for n, p in parts.items() if f"-{killed.pid}-" in n)
        live_part = next(p for n, p in parts.items() if f"-{live.pid}-" in n)
        legacy = folder / ".FTUs.session.npz.ab12_xyZ.part.npz"  # a temporary of the previous scheme
        legacy.write_bytes(b"old")
        os.utime(legacy, (time.time() - 7200,) * 2)
        user_file = folder / "notes.part.txt"
        user_file.write_text("mine")
        saved = SessionStore(folder, "FTUs").restore((120, 120))
        assert saved is not None and good.path.read_bytes() == before  # the kill cost nothing saved
        assert not dead_part.exists() and not legacy.exists()
        assert live_part.exists() and user_file.exists()  # a live save and other files are left alone
    finally:
        live.kill()
        live.wait()
    store = SessionStore(folder, "other layer")
    store.save(ReviewSession(np.zeros((50, 50), np.int32)))  # the next save cleans the second one too
    assert not live_part.exists() and not [p for p in folder.iterdir() if ".part" in p.name and p != user_file]


def test_leftovers_newer_than_the_running_save_or_of_another_host_are_kept(tmp_path):
    from napari_ftu import atomic

    dead = 2**22 + 12345  # above the usual pid_max: no such process
    assert not atomic.pid_alive(dead)
    recent = tmp_path / f".ftu-{atomic.HOST_TAG}-{dead}-0123abcd.part.npz"
    recent.write_bytes(b"x")
    foreign = tmp_path / f".ftu-ffffff-{dead}-0123abcd.part.npz"
    foreign.write_bytes(b"x")
    old_foreign = tmp_path / f".ftu-eeeeee-{dead}-0123abcd.part.npz"
    old_foreign.write_bytes(b"x")
    os.utime(old_foreign, (time.time() - 2 * 86400,) * 2)
    assert atomic.clean_leftovers(tmp_path, before=time.time() - 60) == [old_foreign]
    assert recent.exists() and foreign.exists()
    assert atomic.clean_leftovers(tmp_path, before=time.time() + 1) == [recent]
    assert foreign.exists()
