"""Atomic writes (napari_ftu.atomic): durable (file and folder fsynced), any legal file name,
the replaced file's permissions kept, the temporary of a killed writer recognisable."""

import os
import stat
from pathlib import Path

import pytest

from napari_ftu import atomic
from napari_ftu.atomic import atomic_path, write_text


def test_the_file_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = atomic.os.fsync, atomic.os.replace

    def fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    target = tmp_path / "out" / "result.csv"
    write_text(target, "a,b\n1,2\n")
    assert target.read_text() == "a,b\n1,2\n"
    kinds = [e[0] for e in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    assert events[0][1].parent == target.parent and events[0][1].name.startswith(".ftu-")  # the temporary
    assert events[1][1] == target and events[2][1] == target.parent  # then the folder's entry


@pytest.mark.parametrize("length", [249, 255])
def test_a_legal_long_file_name_can_be_written_and_replaced(tmp_path, length):
    name = "a" * (length - 4) + ".csv"
    assert len(name) == length
    target = tmp_path / name
    write_text(target, "first")
    write_text(target, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary left


def test_a_very_long_suffix_does_not_overflow_the_temporary_name(tmp_path):
    name = "x." + "s" * 240
    write_text(tmp_path / name, "ok")
    assert (tmp_path / name).read_text() == "ok"


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664, 0o755])
def test_replacing_a_file_keeps_its_permissions(tmp_path, mode):
    target = tmp_path / "private.json"
    target.write_text("{}")
    target.chmod(mode)
    write_text(target, '{"a": 1}')
    assert stat.S_IMODE(target.stat().st_mode) == mode
    with atomic_path(target) as tmp:  # any writer, not only write_text
        tmp.write_bytes(b"[]")
    assert stat.S_IMODE(target.stat().st_mode) == mode and target.read_bytes() == b"[]"


def test_a_new_file_gets_the_usual_mode(tmp_path):
    write_text(tmp_path / "new.txt", "x")  # not the 0600 of a temporary file
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o666 & ~atomic._UMASK


def test_the_temporary_names_its_writer(tmp_path):
    seen = []
    with atomic_path(tmp_path / "x.tif") as tmp:
        seen.append(tmp.name)
        tmp.write_bytes(b"x")
    match = atomic.TEMP_RE.match(seen[0])
    assert match and int(match["pid"]) == os.getpid() and match["host"] == atomic.HOST_TAG
    assert seen[0].endswith(".part.tif")  # writers that pick a format by suffix still see it
