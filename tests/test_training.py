import numpy as np

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
    from napari_ftu.formats.export import export_tiles

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
    from napari_ftu.formats.export import export_tiles

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
