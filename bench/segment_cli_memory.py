"""Peak memory of ``napari-ftu segment SLIDE --out x.csv`` on a 50 000 x 50 000 pyramidal OME-TIFF,
measured from outside with ``/usr/bin/time -v`` (the whole process: Python, torch, the model,
reading, the zarr store, labelling and the RLE export).

    python bench/segment_cli_memory.py [--slide PATH] [--size 50000] [--model cheap|default]

The slide is written by ``bench/slide_open.py``'s repeated-patch writer when PATH is missing
(0.5 µm/px, so the model's 2 µm/px grid is 12 500 x 12 500). ``--model cheap`` (the default)
runs ``bench/slide_memory.py``'s fixed 3-layer CNN, saved as a TorchScript model folder, so the
figure measures the command's own memory rather than the network's compute; ``--model default``
runs the built-in model (3136 tiles: about half an hour on a shared 2-core machine).
"""

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def cheap_model_folder(folder: Path, tile: int = 1024) -> Path:
    import torch
    from slide_memory import cheap_model

    model = cheap_model(2.0)
    model.card.tile_size = tile
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.script(model.network).save(str(folder / "model.ts"))
    (folder / "model_card.json").write_text(model.card.to_json())
    return folder


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--slide", type=Path, default=Path("/tmp/bench_slides/synthetic_50000.ome.tif"))
    p.add_argument("--size", type=int, default=50_000)
    p.add_argument("--model", choices=["cheap", "default"], default="cheap")
    args = p.parse_args()
    if not args.slide.exists():
        from slide_open import write_repeated_slide

        args.slide.parent.mkdir(parents=True, exist_ok=True)
        print(f"writing {args.slide} …", flush=True)
        write_repeated_slide(args.slide, args.size)
    with tempfile.TemporaryDirectory(prefix="napari-ftu-bench-") as tmp:
        tmp = Path(tmp)
        cmd = ["/usr/bin/time", "-v", "napari-ftu", "segment", str(args.slide), "--out", str(tmp / "x.csv"),
               "--device", "cpu", "--json"]
        if args.model == "cheap":
            cmd += ["--model", str(cheap_model_folder(tmp / "cheap"))]
            help_text = subprocess.run(["napari-ftu", "segment", "--help"], capture_output=True, text=True,
                                       check=False).stdout
            if "--trust-model" in help_text:  # TorchScript carries code: run only with consent
                cmd.append("--trust-model")
        start = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - start
        if run.returncode:
            sys.exit(f"napari-ftu failed ({run.returncode}): {run.stderr[-2000:]}")
        rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1))
        summary = run.stdout.strip().splitlines()[-1]
        csv_mb = (tmp / "x.csv").stat().st_size / 2**20
    print(f"slide {args.size} x {args.size} px, model {args.model}: {summary}")
    print(f"wall {seconds:.0f} s, RLE CSV {csv_mb:.1f} MB, peak RSS {rss_kb / 2**20:.2f} GiB ({rss_kb / 1024:.0f} MB)")


if __name__ == "__main__":
    main()
