import numpy as np
import pytest

from napari_ftu.engine.inference import segment
from napari_ftu.engine.models import ModelCard, load_model
from napari_ftu.training.train import dataset_samples, synthetic_samples, train


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
    from napari_ftu.engine.models import build_network
    from napari_ftu.errors import OptionError
    from napari_ftu.training.data import new_card

    card = new_card("FPN", "resnet18", 1.0, "fpn")
    assert (card.architecture, card.encoder, card.um_per_px, card.arch_kwargs) == ("FPN", "resnet18", 1.0, {})
    assert type(build_network(card)).__name__ == "FPN"
    assert new_card().arch_kwargs == ModelCard().arch_kwargs  # a Unet keeps the light decoder
    with pytest.raises(OptionError, match="unknown architecture"):
        new_card("Transformer9000")


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
