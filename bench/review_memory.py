"""Peak memory of learning from a review of a 40 000² slide, as a whole process: ``napari-ftu
train --reviews SLIDE`` under ``/usr/bin/time -v`` (Python, torch, reading the crops from the lazy
slide, training, saving the model folder).

    python bench/review_memory.py [--size 40000] [--folder /tmp/bench_review] [--steps 20]

The slide is ``bench/slide_open.py``'s repeated synthetic patch (0.5 µm/px, pyramidal OME-TIFF,
written once and kept). The review is what the Review dock saves for three full-resolution
4096² windows of it: the synthetic glomeruli of each window, two thirds accepted and a third
rejected, and each window marked "nothing else here". The slide itself is 4.8 GB as RGB.
"""

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def write_reviews(slide: Path, size: int, windows: int = 3, patch: int = 4096) -> int:
    """Three window sessions beside ``slide``; returns the number of reviewed objects."""
    from napari_ftu.boxes import box_at, from_corners
    from napari_ftu.io.synthetic import make_slide
    from napari_ftu.review.autosave import SessionStore
    from napari_ftu.review.session import ReviewSession

    _, labels, _ = make_slide(patch, patch, seed=1, um_per_px=0.5)  # the repeated patch's own labels
    n = 0
    for k in range(windows):
        y = x = (size // (windows + 1)) * (k + 1) // patch * patch  # windows aligned with the repeats
        session = ReviewSession(labels.astype(np.int32).copy(), offset=(y, x), um_per_px=0.5)
        ids = sorted(session.review.rows)
        session.accept([i for i in ids if i % 3])
        session.reject([i for i in ids if i % 3 == 0])
        session.mark_done(from_corners(0, 0, patch, patch))
        store = SessionStore(slide.with_name(slide.name + ".ftu"), "slide FTUs", box_at(y, x, patch, patch))
        store.save(session)
        store.release()
        n += len(ids)
    return n


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=40_000)
    p.add_argument("--folder", type=Path, default=Path("/tmp/bench_review"))
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    from slide_open import write_repeated_slide

    args.folder.mkdir(parents=True, exist_ok=True)
    slide = args.folder / f"synthetic_{args.size}.ome.tif"
    if not slide.exists():
        t = time.perf_counter()
        write_repeated_slide(slide, args.size)
        print(f"wrote {slide} in {time.perf_counter() - t:.0f} s")
    n = write_reviews(slide, args.size)
    out = args.folder / "learned"
    cmd = ["/usr/bin/time", "-v", sys.executable, "-c", "import sys; from napari_ftu.cli import main; sys.exit(main())",
           "train", "--reviews", str(slide), "--out", str(out), "--steps", str(args.steps), "--threads", "2",
           "--device", "cpu"]
    t = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if run.returncode:
        raise SystemExit(run.stdout[-2000:] + run.stderr[-3000:])
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1))
    print(run.stdout.strip())
    print(f"slide {args.size}² ({args.size**2 * 3 / 2**30:.1f} GiB as RGB), {n} reviewed objects in 3 windows marked "
          f"done; train --reviews ({args.steps} steps): {seconds:.0f} s, peak RSS {peak_kb / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
