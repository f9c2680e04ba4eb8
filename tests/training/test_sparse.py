"""Learning from reviews: sparse labels, the loss that ignores unknown pixels, rounds."""

import numpy as np
import pytest
import torch

from napari_ftu.boxes import from_corners
from napari_ftu.review.session import ReviewSession
from napari_ftu.training.sparse import UNKNOWN, ReviewData, pooled_crops, review_crops, sparse_mask
from napari_ftu.training.train import sparse_loss


def _labels():
    labels = np.zeros((200, 300), np.int32)
    labels[20:60, 20:60] = 1  # will be accepted
    labels[100:140, 100:150] = 2  # will be rejected
    labels[150:190, 230:280] = 3  # stays unreviewed
    return labels


def test_unknown_pixels_add_nothing_to_the_loss_or_its_gradient():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(2, 1, 32, 32)), dtype=torch.float32, requires_grad=True)
    y = rng.integers(0, 2, (2, 1, 32, 32)).astype(np.uint8)
    y[:, :, :, 16:] = UNKNOWN
    grads, losses = [], []
    for fill in (0, 1):  # what the unknown half "holds" (the labels layer's unreviewed objects or not)
        target = y.copy()
        target[:, :, :, 16:] = UNKNOWN
        loss = sparse_loss(logits, torch.from_numpy(target))
        grad, = torch.autograd.grad(loss, logits)
        grads.append(grad)
        losses.append(float(loss))
        # the same known half with the unknown half spelled out as ``fill`` changes the loss
        dense = y.copy()
        dense[:, :, :, 16:] = fill
        assert float(sparse_loss(logits, torch.from_numpy(dense))) != pytest.approx(float(loss))
    assert grads[0][..., 16:].abs().max() == 0
    assert grads[0][..., :16].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1])
    # changing the logits where nothing is known changes nothing either
    moved = logits.detach().clone()
    moved[..., 16:] += 5
    assert float(sparse_loss(moved, torch.from_numpy(y))) == pytest.approx(losses[0])


def test_sparse_mask_knows_only_what_was_reviewed():
    labels = _labels()
    session = ReviewSession(labels.copy())
    session.accept([1])
    session.reject([2])
    mask = sparse_mask(session.labels, {i: r.status for i, r in session.review.rows.items()}, session.rejected,
                       session.done, ring_px=5)
    assert (mask[20:60, 20:60] == 1).all()  # accepted
    assert (mask[100:140, 100:150] == 0).all()  # rejected: background the model must unlearn
    assert mask[17, 40] == 0 and mask[10, 40] == UNKNOWN  # a 5-px ring around a reviewed object
    assert (mask[150:190, 230:280] == UNKNOWN).all()  # unreviewed prediction: neither FTU nor background
    assert mask[5, 290] == UNKNOWN  # nobody looked there
    session.mark_done(from_corners(0, 200, 200, 300))
    mask = sparse_mask(session.labels, {i: r.status for i, r in session.review.rows.items()}, session.rejected,
                       session.done, ring_px=5)
    assert mask[5, 290] == 0  # "nothing else here"
    assert (mask[150:190, 230:280] == UNKNOWN).all()  # an unreviewed object in a done view is still undecided
    session.undo()
    assert session.done == []


def test_crops_are_cut_at_the_model_scale_around_reviewed_places():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (200, 300, 3), np.uint8)
    session = ReviewSession(_labels())
    session.accept([1])
    session.reject([2])
    data = ReviewData.from_session(session, [image], 1.0, "img")
    crops = review_crops(data, model_um=2.0, crop=64)
    assert len(crops) == 2  # one per reviewed object; the unreviewed one gives none
    for rgb, mask in crops:
        assert rgb.shape[:2] == mask.shape and rgb.dtype == np.uint8
        assert ((mask == 0) | (mask == 1) | (mask == UNKNOWN)).all()
    assert any((m == 1).any() for _, m in crops) and all((m != UNKNOWN).any() for _, m in crops)
    train, val = pooled_crops([data], 2.0, val_every=1, crop=64)
    assert len(val) == 1 and (val[0][1] == 1).any() and len(train) == 1  # whole objects validate, not a strip


class _HugeSlide:
    """A 40 000² RGB slide that exists only where it is read (nothing like it fits in memory)."""

    shape, dtype, ndim = (40_000, 40_000, 3), np.dtype(np.uint8), 3

    def __getitem__(self, key):
        rows, cols = key[:2]
        h, w = rows.stop - rows.start, cols.stop - cols.start
        yy, xx = np.mgrid[rows.start : rows.stop, cols.start : cols.stop]
        return np.broadcast_to(((yy * 7 + xx * 13) % 251).astype(np.uint8)[..., None], (h, w, 3)).copy()


def test_sparse_sampler_memory_is_bounded_by_the_crops_on_a_huge_slide():
    import tracemalloc

    labels = np.zeros((4096, 4096), np.int32)
    for k in range(60):  # 60 reviewed glomeruli in a 4096² window of the slide
        y, x = divmod(k, 8)
        labels[200 + 480 * y : 260 + 480 * y, 200 + 480 * x : 270 + 480 * x] = k + 1
    session = ReviewSession(labels)
    session.accept(list(range(1, 41)))
    session.reject(list(range(41, 61)))
    session.mark_done(from_corners(0, 0, 4096, 4096))  # and a whole window marked done
    data = ReviewData.from_session(session, [_HugeSlide()], 0.5, "huge")
    data.offset = (20_000, 20_000)
    tracemalloc.start()
    crops = review_crops(data, model_um=2.0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    held = sum(a.nbytes + b.nbytes for a, b in crops)
    assert crops and held < 64 * 2**20
    assert peak < 400 * 2**20  # the slide is 4.8 GB, its window 50 MB: only crops and their sources are read


@pytest.fixture(scope="module")
def sarder_patch(shared_data):
    import imageio.v3 as iio

    folder = shared_data / "sarder_frozen_kidney_glomeruli"
    return iio.imread(folder / "images" / "slide_O27_6_647_1192.png")[..., :3]


def test_rejecting_objects_and_learning_lowers_their_probability(sarder_patch, tmp_path, default_model):
    """On a real frozen H&E patch: reject every object the built-in model finds, learn a short
    round from that review, and the new model is less sure of them."""
    from napari_ftu.engine.inference import segment
    from napari_ftu.models.loading import load_model
    from napari_ftu.steps import drain
    from napari_ftu.training.rounds import round_steps

    seg = segment(sarder_patch, default_model, um_per_px=3.0)
    labels = np.asarray(seg.labels).astype(np.int32)
    assert labels.max() > 0, "the built-in model finds objects on this patch"
    prob0 = np.asarray(seg.class_probability(), np.float32) / seg.prob_scale
    session = ReviewSession(labels.copy(), um_per_px=3.0)
    session.reject(list(session.review.rows))
    session.mark_done(from_corners(0, 0, *labels.shape))
    data = ReviewData.from_session(session, [sarder_patch], 3.0, "O27_6")
    out, history = drain(round_steps([data], None, tmp_path / "round-1", seconds=None, steps=60, threads=2,
                                     device="cpu"))
    learned = load_model(out, device="cpu")
    assert learned.card.notes["learned_from"]["slides"] == ["O27_6"]
    assert learned.card.notes["learned_from"]["reviewed_objects"] == labels.max()
    seg1 = segment(sarder_patch, learned, um_per_px=3.0)
    prob1 = np.asarray(seg1.class_probability(), np.float32) / seg1.prob_scale
    objects = labels > 0
    assert prob1[objects].mean() < prob0[objects].mean() - 0.05


def test_a_cancelled_round_writes_nothing(tmp_path):
    from napari_ftu.models.card import ModelCard
    from napari_ftu.models.loading import save_model
    from napari_ftu.steps import TrainStep
    from napari_ftu.training.rounds import round_steps
    from napari_ftu.training.train import new_model

    card, _ = new_model("Unet", "resnet18", um_per_px=2.0, pretrained=False,
                        arch_kwargs={"encoder_depth": 3, "decoder_channels": [16, 8, 4]})
    card = ModelCard.from_dict({**card.__dict__, "tile_size": 128, "overlap": 16})
    from napari_ftu.models.loading import build_network

    save_model(build_network(card), card, tmp_path / "base")
    rng = np.random.default_rng(2)
    session = ReviewSession(_labels())
    session.accept([1])
    data = ReviewData.from_session(session, [rng.integers(0, 255, (200, 300, 3), np.uint8)], 2.0, "img")
    steps = round_steps([data], tmp_path / "base", tmp_path / "round-1", seconds=None, steps=50, device="cpu",
                        crop=64, threads=1)
    seen = [next(steps) for _ in range(3)]
    assert all(isinstance(e, TrainStep) for e in seen)
    steps.close()
    assert not (tmp_path / "round-1").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["base"]  # no half-written folder left either
