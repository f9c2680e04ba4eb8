"""Fluorescence cells (issue 18, HPA seed): the pixel classifier on four channels, cells from a
nuclei-seeded watershed, their class and confidence, the HPA CSV and the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ftu.annotate import cells, pixels, simulate
from napari_ftu.errors import InputError
from napari_ftu.evaluation.metrics import average_precision, dice, match_objects
from napari_ftu.io.synthetic_cells import CHANNELS, CLASSES, make_cells

NAMES = list(CLASSES)  # scribble values 2, 3, 4


def _scribbles(c, seed):
    values = {i: 2 + CLASSES.index(n) for i, n in c.classes.items()}
    return simulate.class_strokes(c.cells, values, 3, 3, seed=seed, brush=5)


@pytest.fixture(scope="module")
def result():
    c = make_cells(512, seed=2024)  # a seed the pipeline was not tuned on
    sc = _scribbles(c, 2024)
    labels, table, clf = cells.cells_from_scribbles(c.image, sc, classes=NAMES)
    return c, sc, labels, table, clf


@pytest.fixture(scope="module")
def small():
    c = make_cells(256, seed=7)
    return c, _scribbles(c, 7)


def test_class_strokes_paint_each_class_inside_its_cells(result):
    c, sc, *_ = result
    kind = c.class_labels()  # 1 + class index, the scribble value minus 1
    for value in (2, 3, 4):
        assert (sc == value).sum() >= 100 and (kind[sc == value] == value - 1).all()
    assert (sc == 1).sum() >= 100 and not c.cells[sc == 1].any()


def test_nuclei_come_from_the_blue_channel(result):
    c, *_ = result
    m = match_objects(cells.nuclei(c.image), c.nuclei, 0.5)
    assert m.f1 > 0.95, (m.tp, m.fp, m.fn)  # measured 1.00 (48 of 48 nuclei)


def test_cells_are_found_with_class_and_confidence(result):
    c, _, labels, table, _ = result
    scores = {r["id"]: r["confidence"] for r in table}
    m = match_objects(labels, c.cells, 0.5, scores)
    ap = average_precision(m)
    # measured on this image: AP@0.5 1.000, Dice 0.965, class accuracy 0.94 (48 of 48 cells matched);
    # a plain (not compact) watershed, which cuts touching cells badly, scored AP 0.50-0.81 on the
    # development images
    assert ap > 0.85, ap
    assert dice(labels, c.cells) > 0.9
    predicted = {r["id"]: r["cls"] for r in table}
    right = [predicted[p] == c.classes[t] for p, t, _ in m.pairs]
    assert np.mean(right) > 0.6, np.mean(right)  # chance is 1/3
    assert set(np.unique(labels)) - {0} == set(scores)
    assert all(r["cls"] in NAMES and 0 < r["confidence"] <= 1 for r in table)


def test_a_cell_takes_the_class_of_its_pixels():
    nuclei = np.zeros((20, 40), np.int32)
    nuclei[8:12, 8:12], nuclei[8:12, 28:32] = 1, 2
    prob = np.zeros((3, 20, 40), np.float32)
    prob[:, 2:18, 2:38] = np.array([0.1, 0.7, 0.1])[:, None, None]  # a cytosol-looking blob around both nuclei ...
    prob[:, 2:18, 22:38] = np.array([0.6, 0.1, 0.2])[:, None, None]  # ... whose right half looks nucleoplasm
    labels, table = cells.cells_from_probability(prob, nuclei, 0.5, NAMES)
    assert labels.max() == 2 and labels[10, 10] != labels[10, 30]
    by_id = {r["id"]: r for r in table}
    left, right = by_id[labels[10, 10]], by_id[labels[10, 30]]
    assert left["cls"] == "cytosol" and right["cls"] == "nucleoplasm"
    # confidence: the winning class' mean probability over the cell (the right cell holds a few
    # cytosol-looking pixels left of x = 22)
    assert right["confidence"] == pytest.approx(prob[0][labels == right["id"]].mean(), rel=1e-5)
    assert 0.5 < right["confidence"] < 0.6 and left["confidence"] == pytest.approx(0.7, rel=1e-5)
    assert labels[0, 0] == 0 and labels[10, 39] == 0  # outside the foreground


def test_the_classifier_takes_four_channels_without_stain_deconvolution(result, tmp_path):
    from napari_ftu.models.card import ModelCard
    from napari_ftu.models.loading import load_model

    c, sc, _, _, clf = result
    assert clf.in_channels == 4 and clf.network.bank.stains == "none"
    card = ModelCard.read(clf.save(tmp_path / "clf") / "model_card.json")
    assert card.in_channels == 4 and card.arch_kwargs["stains"] == "none" and card.classes == ["background", *NAMES]
    model = load_model(tmp_path / "clf", device="cpu")
    assert model.card.in_channels == 4
    # channels-first, as the Load dock holds an HPA composite (the CLI test runs the whole pipeline on it)
    np.testing.assert_array_equal(cells.channels_last(np.moveaxis(c.image, -1, 0)), c.image)


def test_hpa_csv_round_trip(result, tmp_path):
    from napari_ftu.formats.csv_formats import HPA_LABELS
    from napari_ftu.formats.export import export_annotations, format_of, import_annotations

    _, _, labels, table, _ = result
    path = export_annotations(cells.to_annotations("cells_2024", labels, table), tmp_path / "cells.csv", "hpa")
    assert format_of(path) == "hpa"
    (back,) = import_annotations(path, "hpa")
    assert back.image_id == "cells_2024" and back.shape == labels.shape
    # the same masks (ids may be renumbered), each with its HPA label index and confidence
    m = match_objects(back.labels, labels, 0.999)
    assert m.tp == len(table) and m.fp == m.fn == 0
    rows = {r["id"]: r for r in table}
    for new, old, _ in m.pairs:
        assert back.classes[new] == [str(HPA_LABELS.index(rows[old]["cls"]))]
        assert back.scores[new] == pytest.approx(rows[old]["confidence"], rel=1e-5)
    assert {HPA_LABELS[i] for i in (0, 16, 18)} == set(NAMES)


def test_unusable_cell_inputs_are_refused(small):
    c, sc = small
    with pytest.raises(InputError, match="blue .nuclei. channel is empty"):
        no_blue = c.image.copy()
        no_blue[..., 2] = 7
        cells.cells_from_scribbles(no_blue, sc, classes=NAMES)
    with pytest.raises(InputError, match="blue .nuclei. channel shows no nuclei"):
        noise = c.image.copy()
        noise[..., 2] = np.random.default_rng(0).poisson(20, noise.shape[:2])
        cells.nuclei(noise)
    dim = (make_cells(256, seed=7, dtype=np.uint16).image // 64).astype(np.uint16)  # 10-bit data in 16 bits
    assert dim.max() < 1024 and cells.nuclei(dim).max() >= 10
    with pytest.raises(InputError, match="4-channel image"):
        cells.cells_from_scribbles(c.image[..., :3], sc)
    with pytest.raises(InputError, match="does not match the image"):
        cells.cells_from_scribbles(c.image, sc[:-3], classes=NAMES)
    with pytest.raises(InputError, match="value 4 has no class name"):
        cells.cells_from_scribbles(c.image, sc, classes=NAMES[:2])


def _cli(argv, capsys):
    from napari_ftu.cli import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


def _write_inputs(small, tmp_path):
    from skimage.io import imsave

    from napari_ftu.io.images import write_tiff

    c, sc = small
    write_tiff(tmp_path / "cells.tif", c.image)
    write_tiff(tmp_path / "scribbles.tif", sc)
    for k, name in enumerate(CHANNELS):
        imsave(tmp_path / f"abc_{name}.png", c.image[..., k], check_contrast=False)


def test_cli_cells_writes_labels_and_hpa_csv(small, tmp_path, capsys):
    from napari_ftu.formats.export import import_annotations
    from napari_ftu.io.images import read_image

    c, sc = small
    _write_inputs(small, tmp_path)
    code, out = _cli(["annotate", tmp_path / "abc_red.png", "--scribbles", tmp_path / "scribbles.tif", "--cells",
                      "--classes", ",".join(NAMES), "--out", tmp_path / "labels.tif", "--csv", tmp_path / "s.csv"],
                     capsys)
    assert code == 0, out.err
    labels = read_image(tmp_path / "labels.tif").data
    assert dice(labels, c.cells) > 0.85
    (a,) = import_annotations(tmp_path / "s.csv", "hpa")
    assert a.image_id == "abc" and len(a.ids()) == len(np.unique(labels)) - 1
    assert {n for i in a.ids() for n in a.class_names(i)} <= {"0", "16", "18"}
    # the same image as one 4-channel TIFF (channels last; the PNGs were stacked channels first) gives the same cells
    code, out = _cli(["annotate", tmp_path / "cells.tif", "--scribbles", tmp_path / "scribbles.tif", "--cells",
                      "--out", tmp_path / "labels2.tif"], capsys)
    assert code == 0, out.err
    np.testing.assert_array_equal(read_image(tmp_path / "labels2.tif").data, labels)


def test_cli_applies_a_saved_cells_classifier_to_another_field(small, tmp_path, capsys):
    """Scribbles on one field, saved; ``--cells --model`` then makes the cells of other fields
    (an HPA batch) with the saved classes, exactly as the classifier in memory does. The tile
    engine (``segment``) refuses it: its thresholded patches would not be cells."""
    from napari_ftu.formats.export import import_annotations
    from napari_ftu.io.images import read_image, write_tiff
    from napari_ftu.models.card import ModelCard

    c, sc = small
    _write_inputs(small, tmp_path)
    code, out = _cli(["annotate", tmp_path / "cells.tif", "--scribbles", tmp_path / "scribbles.tif", "--cells",
                      "--classes", ",".join(NAMES), "--out", tmp_path / "first.tif", "--save-model", tmp_path / "m"],
                     capsys)
    assert code == 0, out.err
    assert ModelCard.read(tmp_path / "m" / "model_card.json").makes_cells
    other = make_cells(256, seed=8)
    write_tiff(tmp_path / "other.tif", other.image)
    code, out = _cli(["annotate", tmp_path / "other.tif", "--cells", "--model", tmp_path / "m",
                      "--out", tmp_path / "other_cells.tif", "--csv", tmp_path / "other.csv"], capsys)
    assert code == 0, out.err
    labels = read_image(tmp_path / "other_cells.tif").data
    _, _, clf = cells.cells_from_scribbles(c.image, sc, classes=NAMES)
    expected, table = cells.cells_from_probability(clf.probability(other.image), cells.nuclei(other.image), 0.5,
                                                   NAMES)
    np.testing.assert_array_equal(labels, expected)  # the saved classifier is the trained one
    assert dice(labels, other.cells) > 0.85
    (a,) = import_annotations(tmp_path / "other.csv", "hpa")  # HPA labels from the saved class names
    assert a.image_id == "other" and len(a.ids()) == len(table)
    assert {n for i in a.ids() for n in a.class_names(i)} <= {"0", "16", "18"}
    code, out = _cli(["annotate", tmp_path / "other.tif", "--cells", "--model", tmp_path / "m", "--classes",
                      "negative,cytosol,nucleoplasm", "--out", tmp_path / "o2.tif", "--csv", tmp_path / "o2.csv"],
                     capsys)  # --classes renames the saved classes, in their order
    assert code == 0, out.err
    (b,) = import_annotations(tmp_path / "o2.csv", "hpa")
    swap = {"0": "18", "18": "0", "16": "16"}
    assert [swap[n] for i in a.ids() for n in a.class_names(i)] == [n for i in b.ids() for n in b.class_names(i)]
    code, out = _cli(["segment", tmp_path / "other.tif", "--model", tmp_path / "m", "--out", tmp_path / "s.csv"],
                     capsys)
    assert code == 2 and "cells classifier" in out.err and "--cells --model" in out.err, out.err
    assert not (tmp_path / "s.csv").exists()
    code, out = _cli(["segment", tmp_path / "other.tif", tmp_path / "cells.tif", "--model", tmp_path / "m",
                      "--out", tmp_path / "batch"], capsys)  # a batch: refused before any slide
    assert code == 2 and "cells classifier" in out.err and not (tmp_path / "batch").exists(), out.err


def test_cli_cells_bad_input_is_one_error_line(small, tmp_path, capsys):
    from napari_ftu.io.images import write_tiff

    c, sc = small
    _write_inputs(small, tmp_path)
    write_tiff(tmp_path / "small.tif", sc[:100])
    no_blue = c.image.copy()
    no_blue[..., 2] = 0
    write_tiff(tmp_path / "noblue.tif", no_blue)
    write_tiff(tmp_path / "rgb.tif", c.image[..., :3])
    cells.cells_from_scribbles(c.image, sc)[2].save(tmp_path / "m", cells=True)
    pixels.train(c.image[..., :3], sc).save(tmp_path / "rgb_model")
    cases = [
        ("cells.tif", ["--scribbles", "small.tif", "--cells"], "does not match the image"),
        ("noblue.tif", ["--scribbles", "scribbles.tif", "--cells"], "blue (nuclei) channel is empty"),
        ("rgb.tif", ["--scribbles", "scribbles.tif", "--cells"], "4-channel image"),
        ("cells.tif", ["--scribbles", "scribbles.tif", "--csv", "x.csv"], "add --cells"),
        ("cells.tif", ["--scribbles", "scribbles.tif", "--cells", "--csv", "x.csv"], "needs --classes"),
        ("cells.tif", ["--scribbles", "scribbles.tif", "--cells", "--csv", "x.csv", "--classes", "a,b,c"],
         "HPA label names"),
        ("cells.tif", ["--clicks", "scribbles.tif", "--cells"], "from --scribbles or --model"),
        ("cells.tif", ["--model", "m"], "add --cells"),
        ("cells.tif", ["--model", "m", "--cells", "--classes", "a,b"], "2 names for the 3 classes"),
        ("cells.tif", ["--model", "m", "--cells", "--save-model", "m2"], "already saved"),
        ("cells.tif", ["--model", "rgb_model", "--cells"], "takes 3-channel images"),
        ("abc_green.png", ["--scribbles", "scribbles.tif", "--cells", "--csv", "abc_red.png", "--classes", "0,16,18",
                           "--overwrite"], "refusing to write onto an input"),
    ]
    models = ("m", "m2", "rgb_model")
    for image, flags, message in cases:
        argv = ["annotate", tmp_path / image, *[tmp_path / f if f.endswith((".tif", ".csv", ".png")) or f in models
                                                else f for f in flags],
                "--out", tmp_path / "x.tif"]
        code, out = _cli(argv, capsys)
        lines = out.err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("napari-ftu: error:"), (image, flags, out.err)
        assert message in lines[0], (message, lines[0])
        assert not (tmp_path / "x.tif").exists() and not (tmp_path / "x.csv").exists()
    (tmp_path / "missing_red.png").write_bytes((tmp_path / "abc_red.png").read_bytes())
    code, out = _cli(["annotate", tmp_path / "missing_red.png", "--scribbles", tmp_path / "scribbles.tif", "--cells",
                      "--out", tmp_path / "x.tif"], capsys)
    assert code == 2 and "missing_green.png: missing" in out.err
