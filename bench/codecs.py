"""RLE encode/decode speed on 3000 x 3000 masks: ours vs a per-run Python loop vs pycocotools.

The "pages" column is the floor for any decoder: the time to touch the pages of fresh zeroed
memory that the decoded mask must hold. Where it exceeds "run/20", no decoder can be 20x faster
than the per-run loop, which pays that same cost.

Masks: the real 3000 x 3000 HuBMAP/HPA masks of ../shared/data/hubmap2022_rle (when present)
and a synthetic kidney mask. Each figure is the median of repeated runs, measured side by side
in this one process.

    python bench/codecs.py
"""

import csv
import statistics
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from napari_ftu.formats import rle
from napari_ftu.io.synthetic import make_slide

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "hubmap2022_rle" / "train_rows_subset.csv"


def loop_encode(mask):
    """The per-run Python loop: walk the column-major pixels, emitting a run at each change."""
    flat = mask.T.ravel().tolist()
    runs, prev, start = [], 0, 0
    for i, v in enumerate(flat):
        if v and not prev:
            start = i
        elif prev and not v:
            runs += [start + 1, i - start]
        prev = v
    if prev:
        runs += [start + 1, len(flat) - start]
    return " ".join(map(str, runs))


def loop_decode(text, shape):
    """The per-run Python loop decoder most public notebooks use."""
    s = text.split()
    flat = np.zeros(shape[0] * shape[1], np.uint8)
    for start, length in zip(s[0::2], s[1::2]):
        start = int(start) - 1
        flat[start : start + int(length)] = 1
    return flat.reshape(shape, order="F")


def pixel_loop_decode(text, shape):
    """A pure-Python decoder that writes each foreground pixel in a loop."""
    s = text.split()
    flat = bytearray(shape[0] * shape[1])
    for start, length in zip(s[0::2], s[1::2]):
        for i in range(int(start) - 1, int(start) - 1 + int(length)):
            flat[i] = 1
    return np.frombuffer(bytes(flat), np.uint8).reshape(shape, order="F")


def touch_pages(runs, total):
    """The floor for any decoder: fresh zeroed memory, one byte written in each 4 KiB page that
    the runs cover (the pages a decoded mask must hold), with no per-run work at all."""
    pages = set()
    for start, length in runs:
        pages.update(range(start // 4096, (start + length - 1) // 4096 + 1))
    pages = np.array(sorted(pages))

    def touch():
        flat = np.zeros(total, np.uint8)
        view = flat[: total // 4096 * 4096].reshape(-1, 4096)
        view[pages[pages < len(view)], 0] = 1
        return flat

    return touch


def timeit(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def masks():
    out = []
    if SHARED.is_file():
        csv.field_size_limit(2**31 - 1)
        with open(SHARED, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["img_height"] == r["img_width"] == "3000"]
        for r in rows[:5]:
            out.append((f"HPA {r['organ']} {r['id']}", rle.decode(r["rle"], (3000, 3000))))
    _, labels, _ = make_slide(3000, 3000, seed=5, um_per_px=0.5)
    out.append(("synthetic kidney", (labels > 0).astype(np.uint8)))
    return out


def main():
    print(f"{'mask':28s} {'fg':>6s} {'runs':>7s} | {'encode ms: ours':>15s} {'loop':>8s} {'coco':>7s} {'cocoF':>7s}"
          f" | {'decode ms: ours':>15s} {'runloop':>7s} {'pixloop':>7s} {'coco':>6s} {'pages':>6s} {'run/20':>6s}")
    ratios = {"enc_loop": [], "enc_coco": [], "enc_cocoF": [], "dec_loop": [], "dec_pix": [], "dec_coco": []}
    for name, mask in masks():
        text = rle.encode(mask)
        assert loop_encode(mask) == text
        fortran = np.asfortranarray(mask)
        coded = mask_utils.encode(fortran)
        e_ours = timeit(lambda: rle.encode(mask), 15)
        e_loop = timeit(lambda: loop_encode(mask), 1)
        e_coco = timeit(lambda: mask_utils.encode(np.asfortranarray(mask)), 15)
        e_cocoF = timeit(lambda: mask_utils.encode(fortran), 15)
        d_ours = timeit(lambda: rle.decode(text, mask.shape), 15)
        d_loop = timeit(lambda: loop_decode(text, mask.shape), 5)
        d_pix = timeit(lambda: pixel_loop_decode(text, mask.shape), 1)
        d_coco = timeit(lambda: mask_utils.decode(coded), 15)
        values = [int(v) for v in text.split()]
        d_floor = timeit(touch_pages(list(zip([v - 1 for v in values[0::2]], values[1::2])), mask.size), 15)
        assert (rle.decode(text, mask.shape) == loop_decode(text, mask.shape)).all()
        runs = len(values) // 2
        print(f"{name:28s} {mask.mean():6.3f} {runs:7d} | {e_ours*1e3:15.2f} {e_loop*1e3:8.0f} {e_coco*1e3:7.2f}"
              f" {e_cocoF*1e3:7.2f} | {d_ours*1e3:15.2f} {d_loop*1e3:7.2f} {d_pix*1e3:7.0f} {d_coco*1e3:6.2f}"
              f" {d_floor*1e3:6.3f} {d_loop/20*1e3:6.3f}")
        ratios["enc_loop"].append(e_loop / e_ours)
        ratios["enc_coco"].append(e_ours / e_coco)
        ratios["enc_cocoF"].append(e_ours / e_cocoF)
        ratios["dec_loop"].append(d_loop / d_ours)
        ratios["dec_pix"].append(d_pix / d_ours)
        ratios["dec_coco"].append(d_ours / d_coco)
    med = {k: statistics.median(v) for k, v in ratios.items()}
    worst = {k: max(v) if k.endswith("coco") or k.endswith("cocoF") else min(v) for k, v in ratios.items()}
    print()
    print("median (worst mask) over the masks above:")
    print(f"encode: {med['enc_loop']:.0f}x ({worst['enc_loop']:.0f}x) faster than a per-pixel Python loop; "
          f"{med['enc_coco']:.2f}x ({worst['enc_coco']:.2f}x) the time of pycocotools incl. its required Fortran "
          f"copy, {med['enc_cocoF']:.2f}x ({worst['enc_cocoF']:.2f}x) on an already-Fortran mask")
    print(f"decode: {med['dec_loop']:.1f}x ({worst['dec_loop']:.1f}x) faster than the per-run slice loop, "
          f"{med['dec_pix']:.0f}x ({worst['dec_pix']:.0f}x) faster than a per-pixel Python loop; "
          f"{med['dec_coco']:.2f}x ({worst['dec_coco']:.2f}x) the time of pycocotools")
    print("pages: the floor for any decoder (touching the output pages it must write, nothing else); "
          "run/20: the time 20x faster than the per-run loop would need")


if __name__ == "__main__":
    main()
