"""What the review autosave and the durable atomic writes cost.

* one autosave (compress, write, fsync the file and its folder, rename) and one restore of a
  synthetic labelled slide of 768 × 768 and of a 4096 × 4096 window (the largest the dock edits);
* many small atomic files (the training-tile export writes one per tile), with and without the
  fsyncs, to show what durability costs per file.

Medians of repeated runs on the folder given (default: a temporary folder).

    python bench/autosave.py [FOLDER]
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

from napari_ftu import atomic
from napari_ftu.io.synthetic import make_slide
from napari_ftu.review.autosave import SessionStore
from napari_ftu.review.session import ReviewSession


def median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(folder: Path):
    for side, repeat in ((768, 9), (4096, 3)):
        _, labels, _ = make_slide(side, side, seed=1)
        session = ReviewSession(labels)
        store = SessionStore(folder / f"s{side}", "FTUs")
        save = median_time(lambda: store.save(session), repeat)
        size = store.path.stat().st_size
        restore = median_time(lambda: SessionStore(folder / f"s{side}", "FTUs").restore(labels.shape), repeat)
        print(f"{side} × {side}: {len(session.review.rows)} objects, autosave {save * 1000:.0f} ms, "
              f"restore {restore * 1000:.0f} ms, file {size / 1024:.0f} kB")
        store.release()
    n = 300
    small = folder / "small"
    durable = median_time(lambda: [atomic.write_text(small / f"{i}.csv", "a,b\n1,2\n") for i in range(n)], 3) / n
    real = atomic.fsync_path
    atomic.fsync_path = lambda *a, **k: None
    try:
        plain = median_time(lambda: [atomic.write_text(small / f"{i}.csv", "a,b\n1,2\n") for i in range(n)], 3) / n
    finally:
        atomic.fsync_path = real
    print(f"small atomic file: {durable * 1000:.2f} ms with fsync of file and folder, {plain * 1000:.2f} ms without")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
