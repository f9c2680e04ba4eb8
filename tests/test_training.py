import numpy as np

from napari_ftu.inference import segment
from napari_ftu.models import ModelCard, load_model
from napari_ftu.training import dataset_samples, synthetic_samples, train


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
    from napari_ftu.export import export_tiles

    rgb, labels, _ = small_slide
    export_tiles(rgb, labels, tmp_path, "s", tile=256, negative_fraction=0.5)
    pairs = dataset_samples(tmp_path)
    assert pairs and all(img.shape[:2] == mask.shape for img, mask in pairs)
    assert any(mask.any() for _, mask in pairs)
