import numpy as np
import pytest

from napari_ftu.engine.inference import segment
from napari_ftu.models.card import ModelCard
from napari_ftu.models.loading import load_model
from napari_ftu.training.data import dataset_samples, synthetic_samples
from napari_ftu.training.train import train


def test_tiny_training_lowers_loss_and_saves_a_loadable_model(tmp_path):
    card = ModelCard(encoder="resnet18", arch_kwargs={"encoder_depth": 3, "decoder_channels": [16, 8, 4]},
                     um_per_px=2.0, tile_size=128, overlap=16, name="tiny")
    samples = synthetic_samples(2, 256, seed=5, card=card)
    model, history = train(samples, samples[:1], card, out=tmp_path / "m", steps=30, batch_size=4, crop=128,
                           lr=1e-2, val_every=15, device="cpu")
    losses = history["loss"]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    loaded = load_model(tmp_path / "m", device="cpu")
    rgb = samples[0][0]
    a = segment(rgb, model, um_per_px=2.0)
    b = segment(rgb, loaded, um_per_px=2.0)
    np.testing.assert_allclose(a.probability, b.probability, atol=1e-6)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert (tmp_path / "m" / "history.csv").is_file()


def test_exported_tiles_are_training_input(tmp_path, small_slide):
    from napari_ftu.training.tiles import export_tiles

    rgb, labels, _ = small_slide
    export_tiles(rgb, labels, tmp_path, "s", tile=256, negative_fraction=0.5)
    pairs = dataset_samples(tmp_path)
    assert pairs and all(img.shape[:2] == mask.shape for img, mask in pairs)
    assert any(mask.any() for _, mask in pairs)


def test_training_is_seeded_and_reproducible():
    card = ModelCard(encoder="resnet18", arch_kwargs={"encoder_depth": 3, "decoder_channels": [16, 8, 4]},
                     um_per_px=2.0, tile_size=128, overlap=16)
    samples = synthetic_samples(1, 256, seed=8, card=card)
    runs = [train(samples, [], card, steps=3, batch_size=2, crop=64, seed=3, device="cpu")[1]["loss"]
            for _ in range(2)]
    assert runs[0] == runs[1]
    other = train(samples, [], card, steps=3, batch_size=2, crop=64, seed=4, device="cpu")[1]["loss"]
    assert other != runs[0]


def test_exported_tiles_keep_their_pixel_size(tmp_path, small_slide):
    from napari_ftu.formats.datasets import open_dataset
    from napari_ftu.training.tiles import export_tiles

    rgb, labels, _ = small_slide
    export_tiles(rgb, labels, tmp_path, "s", tile=128, um_per_px=1.0, target_um_per_px=2.0)
    item = open_dataset(tmp_path).load(0)
    assert item.slide.um_per_px == 2.0
    card = ModelCard(um_per_px=4.0)
    (img, mask), *_ = dataset_samples(tmp_path, card)
    assert img.shape[:2] == mask.shape == (64, 64)  # resampled from 2 to the model's 4 µm/px


def test_out_of_memory_during_training_halves_the_batch(monkeypatch):
    import torch

    from napari_ftu.training import train as training

    sizes = []
    real_build = training.build_network

    class OutOfMemoryAbove(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            sizes.append(x.shape[0])
            if x.shape[0] > 2:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return self.inner(x)

    card = ModelCard(encoder="resnet18", arch_kwargs={"encoder_depth": 3, "decoder_channels": [16, 8, 4]},
                     um_per_px=2.0, tile_size=128, overlap=16)
    monkeypatch.setattr(training, "build_network", lambda c: OutOfMemoryAbove(real_build(c)))
    samples = synthetic_samples(1, 256, seed=8, card=card)
    _, history = train(samples, [], card, steps=3, batch_size=8, crop=64, device="cpu")
    assert history["batch_size"] == 2 and len(history["loss"]) == 3
    assert sizes[:3] == [8, 4, 2] and set(sizes[3:]) == {2}


def test_validation_split_by_pattern_else_every_fifth_image():
    from napari_ftu.errors import OptionError
    from napari_ftu.training.data import split_ids

    ids = [f"img{i}" for i in range(11)]
    train_ids, val_ids = split_ids(ids, None)
    assert val_ids == ["img0", "img5", "img10"] and len(train_ids) == 8 and not set(train_ids) & set(val_ids)
    assert split_ids(ids, r"^img1")[1] == ["img1", "img10"]
    assert split_ids(ids, "nomatch")[1] == ["img0", "img5", "img10"]  # a pattern that picks none: every fifth
    assert split_ids(ids, None, every=0) == (ids, [])
    with pytest.raises(OptionError, match="regular expression"):
        split_ids(ids, "(")


def test_one_image_pair_holds_out_its_right_fifth(small_slide):
    from napari_ftu.errors import InputError
    from napari_ftu.training.data import pair_split

    rgb, labels, _ = small_slide
    card = ModelCard(um_per_px=2.0)
    (train_rgb, train_mask), = pair_split(rgb, labels, 2.0, card)[0]
    (val_rgb, val_mask), = pair_split(rgb, labels, 2.0, card)[1]
    assert train_rgb.shape[1] + val_rgb.shape[1] == rgb.shape[1] and val_rgb.shape[1] == round(768 * 0.2)
    assert set(np.unique(train_mask)) <= {0, 1}
    (half, _), = pair_split(rgb, labels, 1.0, card)[0]  # 1 µm/px image, 2 µm/px model: half the size
    assert half.shape[0] == 384
    with pytest.raises(InputError, match="differ in size"):
        pair_split(rgb, labels[:100], None, card)


def test_new_model_cards_offer_the_docks_architectures():
    from napari_ftu.errors import OptionError
    from napari_ftu.models.loading import build_network
    from napari_ftu.training.train import new_model

    card, state = new_model("FPN", "resnet18", um_per_px=1.0, pretrained=False, name="fpn")
    assert (card.architecture, card.encoder, card.um_per_px, card.arch_kwargs, state) == ("FPN", "resnet18", 1.0, {},
                                                                                           None)
    assert type(build_network(card)).__name__ == "FPN"
    with pytest.raises(OptionError, match="unknown architecture"):
        new_model("Transformer9000", pretrained=False)


def test_cli_trains_on_one_image_pair_with_the_docks_hold_out(tmp_path, small_slide, capsys):
    import imageio.v3 as iio

    from napari_ftu.cli import main

    rgb, labels, _ = small_slide
    iio.imwrite(tmp_path / "img.png", rgb[:384, :384])
    iio.imwrite(tmp_path / "lab.png", (labels[:384, :384] > 0).astype(np.uint8) * 255)
    assert main(["train", "--out", str(tmp_path / "m"), "--image", str(tmp_path / "img.png"), "--labels",
                 str(tmp_path / "lab.png"), "--steps", "2", "--batch-size", "2", "--crop", "64", "--val-every", "1",
                 "--encoder", "resnet18", "--device", "cpu", "--um-per-px", "1.0"]) == 0
    assert "best validation Dice" in capsys.readouterr().out  # the held-out fifth was validated on
    assert load_model(tmp_path / "m", device="cpu").card.encoder == "resnet18"


def test_fine_tuning_takes_a_smaller_step_and_keeps_where_the_weights_came_from(tmp_path, small_slide):
    import imageio.v3 as iio

    from napari_ftu.cli import main
    from napari_ftu.models.loading import builtin_model_path
    from napari_ftu.training.data import FINE_TUNE_LR, LR

    rgb, labels, _ = small_slide
    iio.imwrite(tmp_path / "img.png", rgb[:384, :384])
    iio.imwrite(tmp_path / "lab.png", (labels[:384, :384] > 0).astype(np.uint8) * 255)
    common = ["--image", str(tmp_path / "img.png"), "--labels", str(tmp_path / "lab.png"), "--steps", "1",
              "--batch-size", "2", "--crop", "64", "--val-every", "1", "--device", "cpu", "--data-um-per-px", "2"]
    assert main(["train", "--out", str(tmp_path / "tuned"), "--init", "builtin", *common]) == 0
    base = load_model(builtin_model_path(), device="cpu").card
    card = load_model(tmp_path / "tuned", device="cpu").card
    assert card.notes["training"]["lr"] == FINE_TUNE_LR < LR
    assert card.name == f"{base.name} (fine-tuned)"
    assert card.notes["data"] == base.notes["data"]  # the data's licence and attribution travel with the weights
    assert "recipe" not in card.notes and card.notes["best_step"] == 1  # the base's training notes do not
    assert card.trained_on["note"] == f"fine-tuned from {builtin_model_path().name}"
    assert main(["train", "--out", str(tmp_path / "new"), "--encoder", "resnet18", "--um-per-px", "2", *common]) == 0
    assert load_model(tmp_path / "new", device="cpu").card.notes["training"]["lr"] == LR


# --- the recipe: budget, augmentation, threshold, CLI ---------------------------------------------


class FakeClock:
    def __init__(self, tick=0.0):
        self.now, self.tick = 1000.0, tick

    def __call__(self):
        self.now += self.tick
        return self.now


def test_schedule_fits_the_wall_clock_budget():
    from napari_ftu.training.train import Schedule

    clock = FakeClock()
    schedule = Schedule(seconds=100.0, clock=clock)
    factors, step = [], 0
    while not schedule.done(step, reserve=5.0):
        factors.append(schedule.lr_factor(schedule.progress(step)))
        step += 1
        clock.now += 0.7  # one training step
    assert 95.0 <= schedule.elapsed() < 95.7 and step == 136
    assert schedule.total(step) == round(step / 0.952)  # the forecast from the measured rate
    assert factors[0] == pytest.approx(0.05) and max(factors) > 0.99 and factors[-1] < 0.05
    assert np.argmax(factors) < 0.1 * len(factors)  # warm-up, then cosine decay
    resumed = Schedule(seconds=100.0, clock=clock, elapsed=60.0)  # an interrupted run continues its clock
    assert resumed.progress(0) == pytest.approx(0.6) and resumed.eta(0) == pytest.approx(40.0)
    with pytest.raises(ValueError):
        Schedule(seconds=0)


def test_training_for_minutes_stops_within_the_budget(tmp_path):
    card = ModelCard(encoder="resnet18", arch_kwargs={"encoder_depth": 3, "decoder_channels": [16, 8, 4]},
                     um_per_px=2.0, tile_size=64, overlap=8)
    samples = synthetic_samples(1, 128, seed=8, card=card)
    clock = FakeClock(tick=0.25)  # each reading of the clock: a quarter second later
    _, history = train(samples, samples, card, minutes=0.5, batch_size=2, crop=64, device="cpu", clock=clock,
                       workers=0)
    assert 15.0 < history["seconds"] <= 30.0 + 3.0, history["seconds"]  # one step (6 clock readings) past at most
    assert len(history["val_dice"]) >= 5 and history["steps"] == len(history["loss"])


def test_augmentation_keeps_image_and_mask_aligned():
    from scipy import ndimage as ndi

    from napari_ftu.training.augment import augment, balanced_crop

    rng = np.random.default_rng(1)
    mask = np.zeros((96, 96), np.uint8)
    mask[20:50, 30:70] = 1
    mask[60:90, 10:30] = 1
    rgb = np.where(mask[..., None] > 0, [120, 40, 110], [235, 215, 230]).astype(np.uint8)  # stained FTU on pale tissue
    for _ in range(20):
        img, m = augment(rng, rgb, mask, distort=1.0)
        assert img.shape == rgb.shape and m.shape == mask.shape and set(np.unique(m)) <= {0, 1}
        dark = img.mean(-1) < img.mean()
        inner = ndi.binary_erosion(m, iterations=2) | ndi.binary_erosion(1 - m, iterations=2)  # away from edges
        assert (dark == (m > 0))[inner].mean() > 0.99
    crops = [balanced_crop(rng, rgb, mask, 32, positive=k % 2 == 0)[1] for k in range(40)]
    ftu, background = [c.mean() for c in crops[::2]], [c.mean() for c in crops[1::2]]
    assert min(ftu) > 0 and np.mean(ftu) > np.mean(background) + 0.2  # crops near FTUs and near background


def test_the_threshold_that_maximises_validation_dice_goes_into_the_card(tmp_path):
    from napari_ftu.training.train import THRESHOLDS, threshold_sweep

    card = ModelCard(encoder="resnet18", arch_kwargs={"encoder_depth": 3, "decoder_channels": [16, 8, 4]},
                     um_per_px=2.0, tile_size=128, overlap=16)
    samples = synthetic_samples(2, 256, seed=5, card=card)
    _, history = train(samples, samples[:1], card, out=tmp_path / "m", steps=12, batch_size=2, crop=128,
                       lr=1e-2, val_every=6, device="cpu", workers=0)
    loaded = load_model(tmp_path / "m", device="cpu")
    scores = threshold_sweep(loaded, samples[:1])
    near = [t for t, d in zip(THRESHOLDS, scores) if d >= scores.max() - 0.01]
    assert loaded.card.threshold == history["best_threshold"] == near[len(near) // 2]  # the plateau's middle
    assert scores.max() == pytest.approx(history["best_dice"], abs=1e-6)


def _tiles(tmp_path, small_slide):
    from napari_ftu.training.tiles import export_tiles

    rgb, labels, _ = small_slide
    export_tiles(rgb, labels, tmp_path / "tiles", "s", tile=192, negative_fraction=1.0)
    return tmp_path / "tiles"


def test_cli_train_defaults_to_a_pretrained_encoder_prints_progress_and_resumes(tmp_path, small_slide, capsys):
    import json

    from napari_ftu.cli import main
    from napari_ftu.training.train import read_checkpoint

    tiles = _tiles(tmp_path, small_slide)
    out = tmp_path / "m"
    args = ["train", "--tiles", str(tiles), "--out", str(out), "--data-um-per-px", "1.0", "--arch", "FPN",
            "--classes", "glomerulus", "--batch-size", "2", "--crop", "64", "--val-every", "2", "--workers", "1",
            "--organ", "kidney", "--stain", "H&E"]
    assert main(args + ["--steps", "4"]) == 0
    captured = capsys.readouterr()
    assert "ImageNet weights" in captured.out and "validation images" in captured.out
    assert "steps/s" in captured.err and "ETA" in captured.err and "data wait" in captured.err
    assert "\r" not in captured.err  # plain lines when stderr is not a terminal
    card = json.loads((out / "model_card.json").read_text())
    assert card["architecture"] == "FPN" and card["encoder"] == "tu-tf_efficientnet_lite0"
    assert card["classes"] == ["glomerulus"] and card["notes"]["encoder_weights"]["licence"] == "Apache-2.0"
    assert card["notes"]["training"]["n_val"] >= 1  # every fifth image held out by default
    from napari_ftu.models.card import ModelCard, describe_domain  # what the Segment dock shows

    assert describe_domain(ModelCard.read(out / "model_card.json")) == f"trained on: kidney; H&E; 1 µm/px; {tiles.name}"
    assert read_checkpoint(out)["step"] == 4
    assert main(args + ["--steps", "6", "--resume"]) == 0
    assert read_checkpoint(out)["step"] == 6
    rows = (out / "history.csv").read_text().splitlines()
    assert len(rows) == 1 + 6  # the first four steps' losses kept from the checkpoint


def test_cli_train_refuses_what_it_cannot_do(tmp_path, small_slide, capsys):
    from napari_ftu.cli import main

    tiles = _tiles(tmp_path, small_slide)
    base = ["train", "--tiles", str(tiles), "--out", str(tmp_path / "m")]
    assert main(base + ["--encoder", "resnet18", "--pretrained"]) == 2
    assert "no offline pretrained weights for encoder 'resnet18'" in capsys.readouterr().err
    assert main(base + ["--resume"]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err
    assert main(base + ["--minutes", "0"]) == 2
    assert main(base + ["--classes", "a,b"]) == 2
    capsys.readouterr()
    for flags, message in ((["--decoder-channels", "64,32"], "five widths"),
                           (["--decoder-channels", "a,b,c,d,e"], "whole numbers"),
                           (["--arch", "FPN", "--decoder-channels", "8,8,8,8,8"], "Unet or UnetPlusPlus")):
        assert main(base + flags) == 2
        assert message in capsys.readouterr().err


def test_new_unets_get_the_narrow_decoder_unless_told(tmp_path, small_slide):
    import json

    from napari_ftu.cli import main
    from napari_ftu.models.loading import build_network
    from napari_ftu.training.train import DECODER_CHANNELS, new_model

    card, _ = new_model("Unet", pretrained=False)
    net = build_network(card)
    widths = [block.conv2[0].out_channels for block in net.decoder.blocks]
    assert widths == list(DECODER_CHANNELS) == [128, 64, 32, 16, 16]
    assert new_model("Unet", pretrained=False, arch_kwargs={"decoder_channels": [256, 128, 64, 32, 16]})[0] \
        .arch_kwargs == {"decoder_channels": [256, 128, 64, 32, 16]}
    out = tmp_path / "wide"
    assert main(["train", "--tiles", str(_tiles(tmp_path, small_slide)), "--out", str(out), "--data-um-per-px", "1.0",
                 "--steps", "1", "--batch-size", "1", "--crop", "64", "--workers", "0", "--no-pretrained",
                 "--decoder-channels", "32,16,16,8,8"]) == 0
    assert json.loads((out / "model_card.json").read_text())["arch_kwargs"] == {"decoder_channels": [32, 16, 16, 8, 8]}


def test_progress_bar_redraws_on_a_terminal():
    import io

    from napari_ftu.steps import TrainStep
    from napari_ftu.training.progress import ProgressPrinter

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    printer = ProgressPrinter(stream)
    stats = {"eta": 75.0, "steps_per_s": 1.5, "data_wait": 0.04, "val_dice": 0.812, "loss_avg": 0.3}
    printer(TrainStep(10, 100, 0.31, stats))
    printer(TrainStep(11, 100, 0.29, stats))
    printer.close()
    text = stream.getvalue()
    assert text.count("\r") == 2 and "ETA 1:15" in text and "val Dice 0.812" in text and "data wait 4 %" in text


def test_the_moving_average_follows_the_weights_with_a_ramped_decay():
    import torch

    from napari_ftu.training.train import _Average

    net = torch.nn.BatchNorm1d(2)
    avg = _Average(net, 0.9)
    expected = net.weight.detach().clone()
    for step, value in enumerate([2.0, 4.0, -1.0, 3.0], start=1):
        with torch.no_grad():
            net.weight.fill_(value)
            net.num_batches_tracked.fill_(step)
        avg.update(net, step)
        d = min(0.9, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * value
        torch.testing.assert_close(avg.shadow["weight"], expected)
        assert avg.shadow["num_batches_tracked"].item() == step  # integer buffers are copied, not averaged


def test_training_saves_the_averaged_weights_without_changing_the_raw_run(tmp_path):
    import torch

    card = ModelCard(encoder="resnet18", arch_kwargs={"encoder_depth": 3, "decoder_channels": [16, 8, 4]},
                     um_per_px=2.0, tile_size=128, overlap=16)
    samples = synthetic_samples(1, 256, seed=8, card=card)
    kw = dict(steps=6, batch_size=2, crop=64, seed=3, device="cpu", workers=0, lr=1e-2)
    raw_model, raw = train(samples, [], card, ema=0, **kw)
    avg_model, avg = train(samples, [], card, ema=0.9, **kw)
    assert raw["loss"] == avg["loss"]  # the average is kept beside the run, never fed back
    a, b = raw_model.network.state_dict(), avg_model.network.state_dict()
    moved = [k for k in a if a[k].dtype.is_floating_point and not torch.equal(a[k], b[k])]
    assert moved and len(moved) > len(a) // 2


def test_cli_train_refuses_an_average_that_never_moves(tmp_path, small_slide, capsys):
    from napari_ftu.cli import main

    tiles = _tiles(tmp_path, small_slide)
    assert main(["train", "--tiles", str(tiles), "--out", str(tmp_path / "m"), "--ema", "1"]) == 2
    assert "--ema must be from 0" in capsys.readouterr().err
