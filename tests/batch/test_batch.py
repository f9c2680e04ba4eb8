"""Batch segmentation: in this process and on a 2-worker Dask LocalCluster on loopback, with the
same results; a worker killed mid-run; resume; failures reported; row bands without seams."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_ftu.batch import runner as batch
from napari_ftu.batch.cluster import local_cluster
from napari_ftu.batch.plan import BatchOptions, pending, plan_inputs
from napari_ftu.batch.runner import run_batch
from napari_ftu.batch.slide import worker_model
from napari_ftu.engine.options import SegmentOptions
from napari_ftu.errors import InputError
from napari_ftu.io.images import read_image

SIZES = [(512, 640), (576, 512), (640, 640), (512, 704), (600, 560), (1280, 896)]
SEEDS = [305, 310, 313, 315, 317, 322]  # each slide holds 3 to 6 glomeruli
BAND_ABOVE = 800_000  # the last slide (1.1 MP) is split into row bands, the others are not
OPTIONS = BatchOptions(device="cpu", outputs=("rle", "labels", "geojson"), band_above_px=BAND_ABOVE,
                       band_pixels=256 * 448)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    from napari_ftu.io.synthetic import write_slide

    folder = tmp_path_factory.mktemp("slides")
    for i, ((h, w), seed) in enumerate(zip(SIZES, SEEDS)):
        write_slide(folder / f"kidney_{i}", h, w, seed=seed, um_per_px=1.0)  # also writes kidney_i_labels.tif
    return folder


@pytest.fixture(scope="module")
def reference(slides, tmp_path_factory):
    """The batch run in this process: what every cluster run must reproduce."""
    out = tmp_path_factory.mktemp("in_process")
    result = run_batch(plan_inputs([slides]), out, OPTIONS)
    assert result.done == 6 and result.failed == 0, result.summary()
    return out, result


@pytest.fixture(scope="module")
def client():
    """The batch's own local cluster (2 workers), secured with temporary TLS credentials."""
    from distributed import Client

    cluster = local_cluster(n_workers=2)
    with Client(cluster) as c:
        yield c
    cluster.close()


REFUSED_CLIENTS = """
import sys
from distributed import Client
from distributed.security import Security

address = sys.argv[1]


def attempt(addr, **kw):
    try:
        Client(addr, timeout=5, **kw).close()
        return "connected"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".replace("\\n", " ")[:300]


print(attempt(address))  # no credentials at all
print(attempt(address, security=Security.temporary()))  # someone else's certificates
print(attempt(address.replace("tls://", "tcp://")))  # plain TCP to the TLS port
"""


def test_local_cluster_refuses_clients_without_its_credentials(client):
    """Another local user can reach the loopback port, but not submit tasks: TLS with this
    process's temporary certificates is required (issue 15). The other user is a separate
    process, as it would be (a refused client in this process can leave distributed's loop
    thread stuck)."""
    import socket
    import subprocess
    import sys

    address = client.scheduler.address
    assert address.startswith("tls://127.0.0.1:")
    assert client.submit(lambda: 41 + 1).result() == 42  # with the credentials: fine
    out = subprocess.run([sys.executable, "-c", REFUSED_CLIENTS, address], capture_output=True, text=True,
                         timeout=180)
    lines = out.stdout.splitlines()
    assert len(lines) == 3, out.stdout + out.stderr
    assert "TLS expects a `ssl_context`" in lines[0], lines[0]
    assert "certificate" in lines[1] or "SSL" in lines[1], lines[1]
    assert lines[2] != "connected", lines[2]
    host, port = address[len("tls://"):].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:  # raw bytes: the TLS handshake fails
        raw.sendall(b"\x00" * 64)
        raw.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            assert raw.recv(64) == b""  # closed without an answer


def _assert_same_results(a: Path, b: Path, ids):
    assert (a / batch.COMBINED).read_bytes() == (b / batch.COMBINED).read_bytes()
    for i in ids:
        assert (a / i / f"{i}.csv").read_bytes() == (b / i / f"{i}.csv").read_bytes()
        assert (a / i / f"{i}.geojson").read_bytes() == (b / i / f"{i}.geojson").read_bytes()
        la = read_image(a / i / f"{i}_labels.ome.tif")
        lb = read_image(b / i / f"{i}_labels.ome.tif")
        np.testing.assert_array_equal(la.data, lb.data)
        assert la.um_per_px == pytest.approx(lb.um_per_px)


def test_plan_lists_slides_not_their_label_files(slides):
    jobs = plan_inputs([slides])
    assert [j.id for j in jobs] == [f"kidney_{i}" for i in range(6)]
    assert plan_inputs([str(slides / "kidney_[12].tif")]) == jobs[1:3]
    with pytest.raises(InputError, match="share the id"):
        plan_inputs([slides, slides / "kidney_0.tif"])
    with pytest.raises(InputError, match="nowhere.tif"):
        plan_inputs([slides / "nowhere.tif"])


def test_plan_reads_a_competition_csv(slides, tmp_path):
    (tmp_path / "test_images").mkdir()
    shutil.copy(slides / "kidney_0.tif", tmp_path / "test_images" / "1234.tif")
    shutil.copy(slides / "kidney_1.tif", tmp_path / "test_images" / "77.tif")
    (tmp_path / "test.csv").write_text("id,organ,pixel_size\n1234,kidney,0.4945\n77,spleen,1\n")
    jobs = plan_inputs([tmp_path / "test.csv"])
    assert [(j.id, j.um_per_px, j.meta["organ"]) for j in jobs] == [("1234", 0.4945, "kidney"), ("77", 1.0, "spleen")]
    (tmp_path / "test.csv").write_text("id,pixel_size\n999,1\n")
    with pytest.raises(Exception, match="999"):
        plan_inputs([tmp_path / "test.csv"])


def test_in_process_batch_matches_the_single_image_command(reference, slides, tmp_path):
    """Each slide's RLE row is the one ``napari-ftu segment IMAGE`` writes; the large slide went
    through row bands and its labels equal one whole-slide run on the model grid."""
    from napari_ftu.cli import main
    from napari_ftu.engine.inference import segment
    from napari_ftu.io.slides import open_slide

    out, result = reference
    rows = {r["id"]: r for r in result.rows}
    assert [rows[f"kidney_{i}"]["bands"] for i in range(6)] == [1, 1, 1, 1, 1, 3]
    assert all(r["n_objects"] > 0 for r in result.rows)
    assert main(["segment", str(slides / "kidney_2.tif"), "--out", str(tmp_path / "one.csv"), "--device", "cpu"]) == 0
    assert (tmp_path / "one.csv").read_text() == (out / "kidney_2" / "kidney_2.csv").read_text()
    with open(out / batch.COMBINED, newline="") as fh:
        combined = list(csv.DictReader(fh))
    assert [r["id"] for r in combined] == [f"kidney_{i}" for i in range(6)]

    slide = open_slide(slides / "kidney_5.tif")
    whole = segment(slide.levels, worker_model(OPTIONS), um_per_px=1.0, full_resolution=False,
                    store=tmp_path / "whole.zarr")
    banded = read_image(out / "kidney_5" / "kidney_5_labels.ome.tif")
    np.testing.assert_array_equal(banded.data, np.asarray(whole.labels[:]))
    assert banded.um_per_px == pytest.approx(2.0) and rows["kidney_5"]["n_objects"] == len(whole.objects)
    assert not (out / "kidney_5" / "bands.zarr").exists()


def test_cluster_of_two_workers_gives_identical_results(reference, slides, client, tmp_path):
    ref_out, _ = reference
    jobs = plan_inputs([slides])
    result = run_batch(jobs, tmp_path, OPTIONS, client=client)
    assert (result.done, result.failed, result.skipped, result.workers) == (6, 0, 0, 2)
    assert len({r["worker"] for r in result.rows}) == 2  # both workers took slides
    _assert_same_results(ref_out, tmp_path, [j.id for j in jobs])


def test_worker_killed_mid_run_the_batch_still_completes(reference, slides, client, tmp_path):
    ref_out, _ = reference
    jobs = plan_inputs([slides])
    pids = set(client.run(os.getpid).values())
    steps = batch.batch_steps(jobs, tmp_path, OPTIONS, client=client)
    killed = None

    async def die():  # a coroutine, so the run call need not wait for an answer that never comes
        os._exit(1)

    with contextlib.closing(steps):
        while True:
            try:
                event = next(steps)
            except StopIteration as stop:
                result = stop.value
                break
            if killed is None and event.row is not None:  # the first slide is done: kill a busy worker
                busy = [w for w, keys in client.processing().items() if keys] or list(client.processing())
                killed = busy[0]
                client.run(die, workers=[killed], wait=False)
    assert killed is not None
    assert (result.done, result.failed) == (6, 0), result.summary()
    _assert_same_results(ref_out, tmp_path, [j.id for j in jobs])
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the killed worker as a new process
    assert set(client.run(os.getpid).values()) != pids


def test_failing_slide_is_reported_and_the_batch_goes_on(slides, client, tmp_path):
    bad = tmp_path / "in" / "broken.tif"
    bad.parent.mkdir()
    bad.write_bytes(b"II*\x00garbage")
    jobs = plan_inputs([bad, slides / "kidney_0.tif"])
    for run in (dict(client=client), {}):  # on the cluster and in this process
        out = tmp_path / ("cluster" if run else "local")
        result = run_batch(jobs, out, OPTIONS, retries=1, **run)
        assert (result.done, result.failed) == (1, 1)
        assert "broken.tif" in result.summary()["failures"]["broken"]
        with open(out / batch.SUMMARY, newline="") as fh:
            status = {r["id"]: r["status"] for r in csv.DictReader(fh)}
        assert status == {"broken": "failed", "kidney_0": "done"}
        assert (out / batch.COMBINED).read_text().splitlines()[1].startswith("kidney_0,")
        assert not (out / "broken" / batch.DONE).exists()


def test_rerun_skips_finished_slides(reference, slides, tmp_path):
    ref_out, _ = reference
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    jobs = plan_inputs([slides])
    stamp = (out / "kidney_3" / batch.DONE).stat().st_mtime_ns
    result = run_batch(jobs, out, OPTIONS)
    assert (result.done, result.skipped) == (6, 6)
    assert (out / "kidney_3" / batch.DONE).stat().st_mtime_ns == stamp  # nothing was recomputed
    (out / "kidney_1" / batch.DONE).unlink()  # as if the run had stopped before this slide finished
    result = run_batch(jobs, out, OPTIONS)
    assert (result.done, result.skipped) == (6, 5)
    assert [r["status"] for r in result.rows].count("done") == 1
    _assert_same_results(ref_out, out, [j.id for j in jobs])
    todo, _ = pending(jobs, out, BatchOptions(device="cpu", outputs=OPTIONS.outputs,
                                                             segment=SegmentOptions(threshold=0.3)))
    assert len(todo) == 6  # another threshold: earlier results are not reused


def test_gpu_workers_each_see_one_device():
    """One worker per GPU, pinned by CUDA_VISIBLE_DEVICES (checked without GPUs: the pinning only)."""
    from distributed import Client

    cluster = local_cluster(devices=["0", "1"])
    try:
        with Client(cluster) as c:
            c.wait_for_workers(2, timeout=60)
            seen = c.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    finally:
        cluster.close()
    assert sorted(seen.values()) == ["0", "1"]


def test_cli_batch_over_a_glob(slides, tmp_path, capsys):
    from napari_ftu.cli import main

    out = tmp_path / "out"
    args = ["segment", str(slides / "kidney_[01].tif"), "--out", str(out), "--workers", "0", "--device", "cpu",
            "--formats", "rle", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["slides"], summary["done"], summary["failed"]) == (2, 2, 0)
    assert summary["slides_per_minute"] > 0 and summary["megapixels_per_second"] > 0
    assert sorted(p.name for p in (out / "kidney_0").iterdir()) == ["done.json", "kidney_0.csv"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 2
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00garbage")
    assert main(["segment", str(bad), str(slides / "kidney_0.tif"), "--out", str(out), "--workers", "0",
                 "--device", "cpu", "--formats", "rle"]) == 1
    text = capsys.readouterr()
    assert "1 failed" in text.out and "broken.tif" in text.out and "2/2 slides" in text.err
    assert main(["segment", str(slides), "--out", str(tmp_path / "x.csv"), "--workers", "0"]) == 2
    assert "folder" in capsys.readouterr().err
    assert main(["segment", str(slides), "--out", str(out), "--formats", "rle,pdf"]) == 2
    assert "pdf" in capsys.readouterr().err


def test_cli_attaches_to_a_running_cluster_by_address(reference, slides, client, tmp_path, capsys):
    """``--scheduler tls://ADDRESS`` with this client's credentials runs the slides on that
    cluster's workers, with the same results; without them it is one error line."""
    from napari_ftu.cli import main

    ref_out, _ = reference
    address = client.scheduler.address
    assert address.startswith("tls://127.0.0.1:")
    creds = []
    for flag, pem in (("--tls-ca", client.security.tls_ca_file), ("--tls-cert", client.security.tls_client_cert),
                      ("--tls-key", client.security.tls_client_key)):
        (tmp_path / flag[2:]).write_text(pem)  # Security.temporary() holds the PEM text itself
        creds += [flag, str(tmp_path / flag[2:])]
    out = tmp_path / "out"
    args = ["segment", str(slides / "kidney_[23].tif"), "--out", str(out), "--scheduler", address,
            "--device", "cpu", "--formats", "rle", "--json"]
    assert main(args) == 2
    assert "--tls-ca, --tls-cert, --tls-key" in capsys.readouterr().err
    (tmp_path / "other.pem").write_text(__import__("distributed").security.Security.temporary().tls_ca_file)
    assert main(args + creds[:1] + [str(tmp_path / "other.pem")] + creds[2:]) == 2  # the wrong CA
    err = capsys.readouterr().err
    assert "cannot connect" in err and err.count("\n") == 1
    assert main(args + creds) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["done"], summary["failed"], summary["workers"]) == (2, 0, 2)
    rows = list(csv.DictReader(open(out / batch.SUMMARY, newline="")))
    assert {r["worker"] for r in rows} <= {str(n) for n in client.scheduler_info()["workers"]} | {
        w["name"] for w in client.scheduler_info()["workers"].values()}
    for i in ("kidney_2", "kidney_3"):
        assert (out / i / f"{i}.csv").read_bytes() == (ref_out / i / f"{i}.csv").read_bytes()


def test_summary_and_geojson_carry_the_measurements(reference, tmp_path):
    """Each slide's summary row holds the measurement summary, the same as ``napari-ftu measure``
    gives on the batch's folder; each GeoJSON object carries its measurement columns."""
    from napari_ftu.cli import main as cli

    out, _ = reference
    rows = {r["id"]: r for r in csv.DictReader(open(out / batch.SUMMARY, newline=""))}
    assert cli(["measure", str(out), "--out", str(tmp_path / "m.csv"), "--summary", str(tmp_path / "s.csv")]) == 0
    measured = {r["slide"]: r for r in csv.DictReader(open(tmp_path / "s.csv", newline=""))}
    assert set(measured) == set(rows)
    for i, row in rows.items():
        m = measured[i]
        assert int(row["n_objects"]) == int(m["n_objects"]) > 0
        for key in ("tissue_area_mm2", "density_per_mm2", "area_median_um2", "n_border"):
            assert float(row[key]) == pytest.approx(float(m[key])), (i, key)
        assert row["classes"] == f"glomerulus={row['n_objects']}"
    objects = {(r["slide"], int(r["id"])): r for r in csv.DictReader(open(tmp_path / "m.csv", newline=""))}
    features = json.loads((out / "kidney_0" / "kidney_0.geojson").read_text())["features"]
    assert features
    for f in features:
        props = f["properties"]["measurements"]
        want = objects[("kidney_0", f["properties"]["ftu_id"])]
        assert props["perimeter_um"] == pytest.approx(float(want["perimeter_um"]), rel=1e-5)
        assert props["solidity"] == pytest.approx(float(want["solidity"]), rel=1e-5)
