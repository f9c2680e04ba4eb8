"""Annotating without a model (issue 18): scribble classifier, one-click objects, CLI, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from napari_ftu.annotate import clicks, pixels, simulate
from napari_ftu.annotate.objects import objects_from_probability
from napari_ftu.errors import InputError

PATCH = "O27_10_180_992"  # three glomeruli, 6 % of the patch
GLASS_PATCH = "O27_11_827_316"  # the lower half is glass
UM = 3.0  # µm/px of the Sarder patches (a 200 µm glomerulus spans about 64 px)


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def _sarder(shared_data, name=PATCH):
    from skimage.io import imread

    root = shared_data / "sarder_frozen_kidney_glomeruli"
    return imread(root / "images" / f"slide_{name}.png")[..., :3], imread(root / "masks" / f"mask_{name}.png") > 0


@pytest.fixture(scope="module")
def trained(shared_data):
    image, truth = _sarder(shared_data)
    scribbles = simulate.strokes(truth, 3, 3, seed=0, brush=5)
    return image, truth, scribbles, pixels.train(image, scribbles, um_per_px=UM, classes=["glomerulus"], deep=3)


def test_simulated_strokes_stay_in_their_region(shared_data):
    _, truth = _sarder(shared_data)
    s = simulate.strokes(truth, 3, 3, seed=1)
    assert (s == 2).sum() >= 40 and (s == 1).sum() >= 40  # three 20-px pieces per class (minus overlaps)
    assert truth[s == 2].all() and not truth[s == 1].any()


def test_quick_strokes_are_wide_dabs_off_the_medial_axis(shared_data):
    from skimage.morphology import skeletonize

    _, truth = _sarder(shared_data)
    careful, quick = simulate.strokes(truth, 3, 3, seed=1), simulate.quick_strokes(truth, 3, 3, seed=1)
    assert truth[quick == 2].all() and not truth[quick == 1].any()
    assert (quick == 2).sum() > 2 * (careful == 2).sum() and (quick == 1).sum() > 2 * (careful == 1).sum()
    on_axis = skeletonize(truth) & (quick == 2)
    assert on_axis.sum() < 0.2 * (quick == 2).sum()  # most of a dab lies beside the medial axis
    assert not (quick == simulate.quick_strokes(truth, 3, 3, seed=2)).all()


def test_scribble_classifier_finds_the_glomeruli_of_a_real_patch(trained):
    image, truth, scribbles, clf = trained
    prob = clf.probability(image)
    labels, table = objects_from_probability(prob, 0.5, 100, um_per_px=UM, class_names=clf.classes)
    d = _dice(labels > 0, truth)
    assert d > 0.6, d  # bench: 0.8 on this patch; the always-FTU answer scores 0.11
    assert table and all(row["cls"] == "glomerulus" and 0.5 <= row["confidence"] <= 1 for row in table)
    assert set(np.unique(labels)) - {0} == {row["id"] for row in table}


def test_saved_classifier_is_a_model_folder_the_tile_engine_runs(trained, tmp_path):
    from napari_ftu.engine.inference import segment
    from napari_ftu.models.card import ModelCard
    from napari_ftu.models.loading import load_model

    image, _, _, clf = trained
    folder = clf.save(tmp_path / "clf")
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "model_card.json"]
    card = ModelCard.read(folder / "model_card.json")
    assert card.architecture == "FeatureClassifier" and card.classes == ["glomerulus"] and card.um_per_px == UM
    assert card.arch_kwargs["deep"] == 3 and "efficientnet-lite0" in card.encoder
    assert card.notes["encoder_weights"]["dataset"] == "ImageNet-1k"
    model = load_model(folder, device="cpu")
    seg = segment(image, model, um_per_px=UM, tile_size=128, overlap=48, skip_background=False)
    direct = clf.probability(image)[0]
    # tiles with enough context reproduce the in-memory prediction away from the image border
    inner = (slice(32, -32), slice(32, -32))
    assert np.abs(np.asarray(seg.probability)[inner] - direct[inner]).mean() < 0.02
    assert _dice(np.asarray(seg.labels) > 0, direct > 0.5) > 0.9


def test_deep_features_are_the_pretrained_encoder_and_travel_in_the_model_folder(trained, tmp_path):
    import torch
    from safetensors.torch import load_file

    from napari_ftu.models.features import DEEP_CHANNELS, deep_state, n_features
    from napari_ftu.models.loading import load_model

    image, _, _, clf = trained
    bank = clf.network.bank
    assert bank.n_out == n_features(3, clf.sigmas) + sum(DEEP_CHANNELS) == clf.network.feat_mean.numel()
    mine = bank.deep.model.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in deep_state(3).items())  # ImageNet weights, frozen
    assert not any(p.requires_grad for p in bank.parameters())
    folder = clf.save(tmp_path / "clf")
    assert any(k.startswith("bank.deep.") for k in load_file(folder / "model.safetensors"))
    model = load_model(folder, device="cpu")  # rebuilt without the wheel: the folder's weights
    x = torch.from_numpy(image[:96, :96].transpose(2, 0, 1).astype(np.float32) / 255)[None]
    with torch.inference_mode():
        assert torch.allclose(model.network(x), clf.network(x), atol=1e-5)
    flat = pixels.train(image, trained[2], UM)  # the default: filters only
    assert flat.network.bank.n_out == n_features(3, clf.sigmas) and flat.card().arch_kwargs["deep"] == 0
    assert not any(k.startswith("bank.deep.") for k in flat.network.state_dict())


def test_deep_features_separate_glomeruli_from_look_alikes(shared_data):
    """Per patch, the same strokes: with the encoder stages the objects match the truth better
    (bench: mean Dice over the 20 patches 0.59 -> 0.70 with 1-px strokes)."""
    names = ["O27_12_622_2012", "O27_14_478_2317", "O27_1_302_2316", "O27_20_1049_3271"]
    gain = []
    for name in names:
        image, truth = _sarder(shared_data, name)
        s = simulate.strokes(truth, 3, 3, seed=0, brush=5)
        d = [_dice(objects_from_probability(pixels.train(image, s, UM, deep=k).probability(image), 0.5, 100)[0] > 0,
                   truth) for k in (0, 3)]
        gain.append(d[1] - d[0])
    assert np.mean(gain) > 0.05, gain


def test_convex_objects_fill_the_rim_without_taking_a_neighbour():
    from napari_ftu.annotate.objects import convex_objects, min_area_px

    yy, xx = np.mgrid[:80, :80]
    r, right = np.hypot(yy - 30, xx - 30), xx > 30
    ring = (r < 20) & ~((r < 12) & right) & ~((abs(yy - 30) < 6) & right)  # a "C" open to the right
    labels = np.zeros((80, 80), np.int32)
    labels[ring] = 1
    labels[28:33, 40:46] = 2  # a small object inside the "C"'s mouth
    out = convex_objects(labels)
    assert (out == 2).sum() == 30 and (out[labels == 1] == 1).all()
    assert (out == 1).sum() > ring.sum() + 100 and out[30, 35] == 1
    prob = np.where(ring, 0.9, 0.1).astype(np.float32)
    hull, _ = objects_from_probability(prob, 0.5, reshape=convex_objects)
    assert hull[30, 35] > 0 and objects_from_probability(prob, 0.5)[0][30, 35] == 0
    assert min_area_px(200, 3.0) == int(np.pi * (200 / 3 / 2) ** 2 / 8)  # 1/8 of a 200 µm disc: 436 px


def _glomerulus(size=120, c=(60, 60)):
    """A drawn glomerulus: a dark tuft (r 12) in a pale Bowman's space, its capsule at r 20, in
    mid-grey tissue with pale tubule lumens further out (r 28-34)."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - c[0], xx - c[1])
    gray = np.full((size, size), 0.55)
    gray[(r >= 28) & (r < 34) & (np.abs(yy - c[0]) < 8)] = 0.95  # two lumens, left and right
    gray[r < 20] = 0.9
    gray[r < 12] = 0.35
    return (np.repeat(gray[..., None], 3, 2) * 255).astype(np.uint8), r


def test_outline_grows_a_tuft_to_its_capsule_not_to_a_tubule():
    from napari_ftu.annotate.outline import enclosing_outline, outline_objects

    image, r = _glomerulus()
    tuft = r < 12
    grown = enclosing_outline(image, tuft, (60, 60), radius_px=20)
    truth = r < 20
    assert (grown & tuft).sum() == tuft.sum()
    assert (grown & truth).sum() / (grown | truth).sum() > 0.85
    assert not grown[r >= 26].any()  # the lumens beyond the capsule stay out
    labels = np.zeros(r.shape, np.int32)
    labels[tuft] = 1
    labels[(r >= 14) & (r < 17) & (np.arange(120)[None, :] > 70)] = 2  # a neighbour inside the space
    out = outline_objects(image, labels, radius_px=20)
    assert (out[labels == 2] == 2).all() and (out == 1).sum() > truth.sum() * 0.8
    cut, _ = _glomerulus(c=(60, 8))  # cut by the image's left edge
    half = (np.hypot(*np.mgrid[:120, :120] - np.array([60, 8])[:, None, None]) < 12)
    grown = enclosing_outline(cut, half, (60, 8), radius_px=20)
    assert grown[60, 0] and grown[60, 25] and not grown[60, 32]


def test_two_ftu_classes_give_background_plus_classes(trained):
    image, truth, scribbles, _ = trained
    s = scribbles.copy()
    s[(s == 2) & (np.arange(s.shape[1])[None, :] > 128)] = 3
    if not (s == 3).any() or not (s == 2).any():
        pytest.skip("strokes all on one side")
    clf = pixels.train(image, s, classes=["a", "b"])
    assert clf.card().classes == ["background", "a", "b"]
    prob = clf.probability(image)
    assert prob.shape == (2, *image.shape[:2]) and float(prob.sum(0).max()) <= 1.0 + 1e-5


@pytest.mark.parametrize("change, message", [
    (lambda s: s[:-1], "does not match the image"),
    (lambda s: np.where(s == 1, 0, s), "no background strokes"),
    (lambda s: np.where(s >= 2, 0, s), "no FTU strokes"),
])
def test_unusable_scribbles_are_refused(trained, change, message):
    image, _, scribbles, _ = trained
    with pytest.raises(InputError, match=message):
        pixels.train(image, change(scribbles))


def test_one_click_outlines_the_glomerulus(shared_data):
    """All 49 glomeruli of the 20 patches, the 18 whole ones and the 31 cut by the patch edge: the
    click's object reaches the capsule, and on a cut piece no deeper than twice the click's depth
    (bench: mean IoU 0.69 whole, 0.70 cut; before the depth limit the cut ones scored 0.60)."""
    from scipy import ndimage as ndi

    ious = {True: [], False: []}
    for path in sorted((shared_data / "sarder_frozen_kidney_glomeruli" / "images").glob("slide_*.png")):
        image, truth = _sarder(shared_data, path.stem[len("slide_"):])
        lab, _ = ndi.label(truth)
        rim = set(np.unique(np.concatenate([lab[[0, -1]].ravel(), lab[:, [0, -1]].ravel()])))
        for y, x, i in simulate.clicks(lab):
            m = clicks.object_at(image, (y, x), um_per_px=UM)
            assert m[y, x]
            ious[i in rim].append((m & (lab == i)).sum() / (m | (lab == i)).sum())
    whole, cut = ious[False], ious[True]
    assert len(whole) >= 15 and len(cut) >= 25
    assert np.mean(whole) > 0.65 and np.mean(cut) > 0.65 and np.mean(whole + cut) > 0.65, (whole, cut)


def test_a_click_near_the_edge_takes_the_visible_piece():
    """A glomerulus whose centre lies beyond the image's left edge: its visible piece is 14 px
    deep, the click at its middle gives an object no deeper than twice the click's column."""
    image, r = _glomerulus(c=(60, -6))
    truth = r < 20
    y, x = simulate.clicks(truth)[0][:2]
    m = clicks.object_at(image, (y, x), um_per_px=1.0, diameter_um=40)
    assert m[y, x] and not m[:, 2 * x + 1 :].any()
    assert (m & truth).sum() / (m | truth).sum() > 0.7


def test_clicks_outside_the_image_or_on_glass_are_refused(shared_data):
    image, _ = _sarder(shared_data, GLASS_PATCH)
    with pytest.raises(InputError, match="outside the image"):
        clicks.object_at(image, (300, 10))
    with pytest.raises(InputError, match="on glass"):
        clicks.object_at(image, (200, 128), um_per_px=UM)


def _cli(argv, capsys):
    from napari_ftu.cli import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


def test_cli_annotate_scribbles_and_clicks(trained, tmp_path, capsys):
    from napari_ftu.io.images import read_image, write_tiff
    from napari_ftu.models.loading import load_model

    image, truth, scribbles, _ = trained
    write_tiff(tmp_path / "image.tif", image, UM)
    write_tiff(tmp_path / "scribbles.tif", scribbles)
    code, out = _cli(["annotate", tmp_path / "image.tif", "--scribbles", tmp_path / "scribbles.tif", "--out",
                      tmp_path / "labels.tif", "--save-model", tmp_path / "model"], capsys)
    assert code == 0, out.err
    labels = read_image(tmp_path / "labels.tif").data
    assert labels.shape == truth.shape and _dice(labels > 0, truth) > 0.6
    load_model(tmp_path / "model", device="cpu")

    from scipy import ndimage as ndi

    lab, _ = ndi.label(truth)
    pts = simulate.clicks(lab)
    (tmp_path / "clicks.csv").write_text("y,x\n" + "".join(f"{y},{x}\n" for y, x, _ in pts))
    code, out = _cli(["annotate", tmp_path / "image.tif", "--clicks", tmp_path / "clicks.csv", "--out",
                      tmp_path / "clicked.tif"], capsys)
    assert code == 0, out.err
    clicked = read_image(tmp_path / "clicked.tif").data
    assert len(np.unique(clicked)) - 1 == len(pts) and _dice(clicked > 0, truth) > 0.5


def test_cli_annotate_encoder_features_and_object_shapes(trained, tmp_path, capsys):
    import json

    from scipy import ndimage as ndi

    from napari_ftu.annotate.headless import SCRIBBLE_DEFAULTS
    from napari_ftu.annotate.objects import convex_objects
    from napari_ftu.io.images import read_image, write_tiff

    image, truth, scribbles, _ = trained
    write_tiff(tmp_path / "image.tif", image, UM)
    write_tiff(tmp_path / "scribbles.tif", scribbles)
    base = ["annotate", tmp_path / "image.tif", "--scribbles", tmp_path / "scribbles.tif"]
    off = ["--no-encoder-features", "--shape", "none", "--min-object-um2", "0"]  # the defaults turned off
    code, out = _cli(base + ["--out", tmp_path / "plain.tif", "--save-model", tmp_path / "plain", *off], capsys)
    assert code == 0, out.err
    code, out = _cli(base + ["--out", tmp_path / "deep.tif", "--save-model", tmp_path / "deep", "--encoder-features",
                             "--shape", "convex", "--min-object-um2", "0"], capsys)
    assert code == 0, out.err
    code, out = _cli(base + ["--out", tmp_path / "defaults.tif", "--save-model", tmp_path / "defaults"], capsys)
    assert code == 0, out.err
    cards = [json.loads((tmp_path / m / "model_card.json").read_text()) for m in ("plain", "deep", "defaults")]
    d = SCRIBBLE_DEFAULTS
    assert [c["arch_kwargs"]["deep"] for c in cards] == [0, 3, 3 if d.encoder_features else 0]
    assert [c["min_object_um2"] for c in cards] == [0, 0, pytest.approx(d.min_object_um2(200.0))]
    assert cards[1]["notes"]["encoder_weights"]["licence"] == "Apache-2.0"
    plain, deep, defaults = (read_image(tmp_path / f).data for f in ("plain.tif", "deep.tif", "defaults.tif"))
    assert _dice(defaults > 0, truth) > _dice(deep > 0, truth) > _dice(plain > 0, truth)  # the bench's order
    grown = convex_objects(deep) != deep  # hull again: at most a rim of corner pixels
    assert not (grown & ~ndi.binary_dilation(deep > 0)).any()


def test_cli_annotate_without_a_pixel_size_keeps_objects_of_any_size(trained, tmp_path, capsys):
    """At the 1 µm/px stand-in a 3 µm/px glomerulus is under the default share of a 200-µm disc:
    the default minimum applies only where the pixel size is known."""
    from napari_ftu.io.images import read_image, write_tiff

    image, truth, scribbles, _ = trained
    write_tiff(tmp_path / "image.tif", image)  # no pixel size, as the Sarder PNGs
    write_tiff(tmp_path / "scribbles.tif", scribbles)
    code, out = _cli(["annotate", tmp_path / "image.tif", "--scribbles", tmp_path / "scribbles.tif", "--out",
                      tmp_path / "labels.tif", "--save-model", tmp_path / "clf"], capsys)
    assert code == 0, out.err
    labels = read_image(tmp_path / "labels.tif").data
    assert _dice(labels > 0, truth) > 0.3 and read_image(tmp_path / "image.tif").um_per_px is None
    assert '"min_object_um2": 0.0' in (tmp_path / "clf" / "model_card.json").read_text()


def test_cli_annotate_bad_input_is_one_error_line(trained, tmp_path, capsys):
    from napari_ftu.io.images import write_tiff

    image, _, scribbles, _ = trained
    write_tiff(tmp_path / "image.tif", image)
    write_tiff(tmp_path / "small.tif", scribbles[:100])
    write_tiff(tmp_path / "nobg.tif", np.where(scribbles == 1, 0, scribbles).astype(np.uint8))
    (tmp_path / "out.csv").write_text("y,x\n10,10\n999,5\n")
    (tmp_path / "cols.csv").write_text("row,col\n10,10\n")
    cases = [["--scribbles", tmp_path / "small.tif"], ["--scribbles", tmp_path / "nobg.tif"],
             ["--clicks", tmp_path / "out.csv"], ["--clicks", tmp_path / "cols.csv"]]
    for case in cases:
        code, out = _cli(["annotate", tmp_path / "image.tif", *case, "--out", tmp_path / "x.tif"], capsys)
        lines = out.err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("napari-ftu: error:"), out.err
        assert not (tmp_path / "x.tif").exists()


def test_live_classifier_with_encoder_stages_hands_out_what_it_shows(shared_data):
    """The live stack may hold the encoder stages (at the view grid's scale); the classifier a
    retrain hands out (the one Save and Apply use) predicts what the live view shows."""
    from napari_ftu.annotate import live
    from napari_ftu.boxes import box_at

    image, truth = _sarder(shared_data)
    model = live.LiveClassifier(deep=3)
    view = live.view_of(box_at(0, 0, *image.shape[:2]), image.shape)
    model.set_view([image], view, um_per_px=UM)
    clf = model.retrain(live.view_scribbles(simulate.strokes(truth, 3, 3, seed=0, brush=5), view), UM)
    assert clf.deep == 3 and clf.deep_scale == 2.0 and clf.network.bank.n_deep == 3
    shown = model.predict()[0]
    assert np.abs(shown - clf.probability(image)[0]).mean() < 0.01
    assert _dice(shown > 0.5, truth) > 0.5
    assert not model.set_view([image], view, um_per_px=UM) and model.stacks_computed == 1
    model.set_view([image], view, um_per_px=UM / 2)  # another grid: another encoder scale, a cold fit
    assert model.stacks_computed == 2 and model.retrain(
        live.view_scribbles(simulate.strokes(truth, 3, 3, seed=0, brush=5), view), UM / 2).deep_scale == 1.0
