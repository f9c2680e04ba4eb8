"""``napari-ftu export`` converts a file of many images holding one at a time: the peak memory of
the whole command does not grow with the number of rows."""

import subprocess
import sys

SIDE = 3000  # one row: a 9 MB mask (36 MB as int32 labels)


def _export_peak_mb(tmp_path, n_rows: int) -> float:
    rows = "".join(f"r{i},kidney,HuBMAP,{SIDE},{SIDE},0.5,1 {SIDE * SIDE}\n" for i in range(n_rows))
    (tmp_path / f"train{n_rows}.csv").write_text("id,organ,data_source,img_height,img_width,pixel_size,rle\n" + rows)
    code = ("import resource, sys\nfrom napari_ftu.cli import main\n"
            f"rc = main(['export', 'train{n_rows}.csv', '--from', 'hubmap-train', '--out', 'out{n_rows}.csv'])\n"
            "print(rc, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    rc, peak = out.stdout.strip().splitlines()[-1].split()
    assert rc == "0", out.stdout + out.stderr
    lines = (tmp_path / f"out{n_rows}.csv").read_text().splitlines()
    assert lines == ["id,rle"] + [f"r{i},1 {SIDE * SIDE}" for i in range(n_rows)]
    return float(peak)


def test_export_of_many_rows_costs_one_row(tmp_path):
    one, many = _export_peak_mb(tmp_path, 1), _export_peak_mb(tmp_path, 24)
    # holding the 24 rows' labels would add 23 x 36 MB; one image at a time adds nothing
    assert many - one < 3 * SIDE * SIDE * 4 / 2**20, (one, many)
