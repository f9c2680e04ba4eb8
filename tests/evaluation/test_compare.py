"""The Debug dock's logic in the core: A-vs-B comparison, score fallback and CSV files, the same
numbers from ``napari-ftu evaluate --compare``; batch output folders as a dataset layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_ftu.cli import main
from napari_ftu.evaluation.compare import A_B, A_TRUTH, B_TRUTH, compare, object_scores, write_comparison


def _scenes():
    """Truth with four objects; A misses one and adds one; B is the truth shifted by 3 px."""
    truth = np.zeros((120, 160), np.uint16)
    for k, (y, x) in enumerate([(10, 10), (10, 80), (60, 20), (70, 100)], start=1):
        truth[y:y + 30, x:x + 30] = k
    a = truth.copy()
    a[a == 4] = 0
    a[100:115, 140:155] = 9
    b = np.roll(truth, 3, axis=1)
    return truth, a, b


def test_compare_counts_what_each_side_gets_right():
    truth, a, b = _scenes()
    out = compare(a, truth, b)
    assert out["columns"] == [A_TRUTH, B_TRUTH, A_B]
    rows = dict(zip(out["columns"], out["rows"]))
    assert (rows[A_TRUTH]["tp"], rows[A_TRUTH]["fp"], rows[A_TRUTH]["fn"]) == (3, 1, 1)
    assert (rows[B_TRUTH]["tp"], rows[B_TRUTH]["fp"], rows[B_TRUTH]["fn"]) == (4, 0, 0)
    assert rows[B_TRUTH]["dice"] == pytest.approx(2 * 27 / 60)  # each square overlaps 27 of 30 columns
    assert (rows[A_B]["tp"], rows[A_B]["fp"], rows[A_B]["fn"]) == (3, 1, 1)
    assert {(o["kind"], o["id"]) for o in out["objects"] if o["kind"] != "TP"} == {("FN", 4), ("FP", 9)}
    assert set(np.unique(out["diff"])) == {0, 1, 2}


def test_object_scores_prefer_the_confidence_column_then_the_mean_probability():
    truth, a, _ = _scenes()
    prob = np.where(a == 1, 0.9, 0.3).astype(np.float32)
    assert object_scores(a, prob)[1] == pytest.approx(0.9)
    assert object_scores(a, prob)[2] == pytest.approx(0.3)
    features = {"index": [1, 2], "confidence": [0.5, float("nan")]}
    assert object_scores(a, prob, features) == {1: 0.5}
    assert object_scores(a) == {}


def test_comparison_csv_files(tmp_path):
    truth, a, b = _scenes()
    prob = (a > 0).astype(np.float32) * 0.8
    written = write_comparison(tmp_path, compare(a, truth, b, prob))
    assert sorted(p.name for p in written) == ["dice_vs_threshold.csv", "metrics.csv", "objects.csv"]
    metrics = (tmp_path / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in metrics[1:]] == [A_TRUTH, B_TRUTH, A_B]
    assert len((tmp_path / "objects.csv").read_text().splitlines()) == 1 + 3 + 1 + 1  # header, TP, FP, FN


def test_cli_compare_prints_the_debug_docks_numbers(tmp_path, capsys):
    import imageio.v3 as iio

    truth, a, b = _scenes()
    for name, arr in (("a", a), ("truth", truth), ("b", b)):
        iio.imwrite(tmp_path / f"{name}.png", arr)
    expected = compare(a, truth, b)
    assert main(["evaluate", str(tmp_path / "a.png"), str(tmp_path / "truth.png"),
                 "--compare", str(tmp_path / "b.png"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    got = {row["group"]: row for row in out["summary"]}
    for column, row in zip(expected["columns"], expected["rows"]):
        for key in ("dice", "iou", "tp", "fp", "fn", "precision", "recall", "f1", "ap"):
            assert got[column][key] == pytest.approx(row[key]), (column, key)
    assert main(["evaluate", str(tmp_path / "a.png"), str(tmp_path / "truth.png"),
                 "--compare", str(tmp_path / "b.png")]) == 0
    assert "A vs B/all: 1 images" in capsys.readouterr().out


@pytest.fixture(scope="module")
def batch_output(tmp_path_factory):
    """A dataset (images/ + masks/) of two synthetic slides and a batch run over its images."""
    from napari_ftu.batch.plan import BatchOptions, plan_inputs
    from napari_ftu.batch.runner import run_batch
    from napari_ftu.io.synthetic import write_slide

    root = tmp_path_factory.mktemp("batch_eval")
    (root / "data" / "masks").mkdir(parents=True)
    for name, seed in (("kidney_a", 305), ("kidney_b", 313)):
        paths = write_slide(root / "data" / "images" / name, 512, 512, seed=seed, um_per_px=1.0)
        labels = root / "data" / "images" / f"{name}_labels.tif"
        labels.rename(root / "data" / "masks" / labels.name)
    result = run_batch(plan_inputs([root / "data" / "images"]), root / "out", BatchOptions(device="cpu"))
    assert result.done == 2, (paths, result.summary())
    return root / "out", root / "data"


def test_evaluate_a_batch_output_folder_against_its_dataset(batch_output, capsys):
    out, data = batch_output
    assert main(["evaluate", str(out), str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    images = {r["image"] for r in report["images"]}
    assert images == {"kidney_a", "kidney_b"} and not report["missing_predictions"]
    assert report["summary"][0]["dice"] > 0.7  # the default model finds the glomeruli


def test_info_and_reader_know_batch_output_folders(batch_output, capsys):
    from napari_ftu.formats.datasets import open_dataset
    from napari_ftu.formats.datasets.batch_output import BatchOutput
    from napari_ftu.plugin.reader import get_reader

    out, _ = batch_output
    assert isinstance(open_dataset(out), BatchOutput)
    assert main(["info", str(out), "--json", "--item", "1"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == "napari-ftu batch output" and info["images"] == 2
    assert info["item"]["id"] == "kidney_b" and info["item"]["objects"] > 0
    layers = get_reader(str(out))(str(out))
    assert [kind for _, _, kind in layers] == ["image", "labels"]
    assert layers[1][0].max() > 0
