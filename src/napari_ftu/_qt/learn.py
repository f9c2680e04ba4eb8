"""The Review dock's "Learn from my reviews" section: rounds of fine-tuning from the reviews made
so far, while the reviewer goes on; the queue then puts what the new model doubts first.

A thin view: the sparse labels and the round are :mod:`napari_ftu.training.sparse` and
:mod:`napari_ftu.training.rounds`, the merge that leaves reviewed objects alone is
:meth:`~napari_ftu.review.session.ReviewSession.repredict`, the queue's order and the possible
misses are :mod:`napari_ftu.review.active`. Keys (labels layer selected): D nothing else here,
L learn now, G next possible miss, Shift+A accept it, Shift+R dismiss it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import Container, ProgressBar, SpinBox
from napari.utils.notifications import show_info

from napari_ftu._qt.common import button, status_line
from napari_ftu._qt.jobs import start_job
from napari_ftu.errors import EditError, InputError, ModelError

MISS_LAYER = "{} possible misses"


class LearnPanel:
    """Learning while reviewing, for the :class:`~napari_ftu._qt.review.ReviewWidget` ``dock``,
    which lays out :attr:`buttons` (a toolbar), :attr:`settings`, :attr:`bar` and :attr:`info`."""

    def __init__(self, dock):
        from napari_ftu.training.rounds import ROUND_SECONDS

        self.dock = dock
        self.worker = None
        self.round = 0
        self.model_path: Path | None = None  # the model in use: the last round's, else the layer's
        self.pool: dict = {}  # image name -> its review (several images' reviews are pooled)
        self.previous = None  # the labels before the last re-prediction (models' disagreement)
        self.misses: list = []
        self._decisions_at_round = 0
        self.every = SpinBox(label="learn every", value=0, min=0, max=1000,
                             tooltip="start a round after this many review decisions (0: only with the button)")
        self.seconds = SpinBox(label="round s", value=int(ROUND_SECONDS), min=10, max=3600,
                               tooltip="seconds of training per round")
        self.done_button = button("Done here D", self.mark_done,
                                  tooltip="nothing else here: what is not an object in this view is background (D)")
        self.learn_button = button("Learn L", self.learn, tooltip="learn from my reviews now, then re-predict the "
                                   "unreviewed objects (L)")
        self.cancel_button = button("Cancel", self.cancel, enabled=False, tooltip="cancel the round: the model in "
                                    "use stays")
        self.miss_button = button("Miss G ▶", self.next_miss, tooltip="go to the next possible miss (G)")
        self.accept_miss_button = button("Take ⇧A", self.accept_miss, tooltip="the possible miss is an FTU (Shift+A)")
        self.dismiss_miss_button = button("Drop ⇧R", self.dismiss_miss,
                                          tooltip="the possible miss is not an FTU (Shift+R)")
        self.buttons = [self.done_button, self.learn_button, self.cancel_button, self.miss_button,
                        self.accept_miss_button, self.dismiss_miss_button]
        self.settings = Container(layout="horizontal", widgets=[self.every, self.seconds])
        self.settings.margins = (0, 0, 0, 0)
        self.bar = ProgressBar(label="round", value=0, min=0, max=1)
        self.bar.visible = False
        self.info = status_line("Learning: review a few objects, then L")
        self._miss_index = -1
        for b in (self.miss_button, self.accept_miss_button, self.dismiss_miss_button):
            b.enabled = False  # until a round offers possible misses

    # --- keys --------------------------------------------------------------------------------
    def bind_keys(self, layer) -> None:
        for key, action in [("d", self.mark_done), ("l", self.learn), ("g", self.next_miss),
                            ("Shift-A", self.accept_miss), ("Shift-R", self.dismiss_miss)]:
            layer.bind_key(key, lambda _layer, act=action: act(), overwrite=True)

    # --- nothing else here -------------------------------------------------------------------
    def view_box(self):
        """The part of the labels the canvas shows, in label pixels."""
        from napari_ftu.boxes import from_corners

        viewer, layer = self.dock._viewer, self.dock.layer
        camera = viewer.scene.camera
        half = np.asarray(viewer.canvas.size, float) / 2 / camera.zoom  # world units (the canvas is (h, w))
        centre = np.asarray(camera.center[-2:], float)
        corners = [np.asarray(layer.world_to_data(c))[-2:] for c in (centre - half, centre + half)]
        (y0, x0), (y1, x1) = np.minimum(*corners), np.maximum(*corners)
        return from_corners(int(np.floor(y0)), int(np.floor(x0)), int(np.ceil(y1)), int(np.ceil(x1)))

    def mark_done(self, box=None):
        """The reviewer has looked at this view: what is not an object in it is background."""
        session = self.dock.session
        if session is None:
            return self.dock._fail("choose a Labels layer to review")
        try:
            session.mark_done(box if box is not None else self.view_box())
        except EditError as exc:
            return self.dock._fail(exc)
        self.dock.refresh()
        self.info.value = f"{len(session.done)} view(s) marked done"
        self.maybe_learn()
        return session.done[-1]

    # --- learning ------------------------------------------------------------------------------
    def decisions(self) -> int:
        session = self.dock.session
        return 0 if session is None else session.review.counts()["reviewed"] + len(session.done)

    def maybe_learn(self):
        """Start a round when ``every`` decisions have been made since the last one."""
        if self.every.value and self.worker is None and self.decisions() - self._decisions_at_round >= \
                self.every.value:
            self.learn()

    def _base(self):
        if self.model_path is not None:
            return self.model_path
        model = self.dock.layer.metadata.get("model") if self.dock.layer is not None else None
        return Path(model) if model else None  # None: the built-in model

    def learn(self):
        """One round in a worker: train on the reviews so far, then re-predict the unreviewed objects."""
        from napari_ftu.training.rounds import learn_and_predict_steps
        from napari_ftu.training.sparse import ReviewData

        dock, session = self.dock, self.dock.session
        if session is None or dock.layer is None:
            return dock._fail("choose a Labels layer to review")
        if self.worker is not None:
            return None
        image = dock._image_of(dock.layer)
        if image is None:
            return dock._fail("the image of these labels is not in the viewer")
        um = dock.layer.metadata.get("um_per_px") or image.metadata.get("um_per_px")
        window = self._window_image(image, session)
        review = ReviewData([window], um, session.labels.copy(), {i: r.status for i, r in session.review.rows.items()},
                            None if session.rejected is None else session.rejected.copy(), list(session.done), (0, 0),
                            image.name)
        self.pool[(image.name, session.offset)] = review
        reviews = list(self.pool.values())
        if sum(r.n_reviewed for r in reviews) < 1:
            return dock._fail("nothing reviewed yet: accept, reject or draw objects, or mark a view done (D)")
        folder = Path(dock._session_folder(dock.layer)) / "models"
        saved = sorted(int(p.name[6:]) for p in folder.glob("round-*") if p.name[6:].isdigit())
        if saved and self.model_path is None:  # a review reopened: go on from its last round's model
            self.model_path = folder / f"round-{saved[-1]}"
        self.round = max(self.round, saved[-1] if saved else 0) + 1  # never over an earlier round's folder
        out = folder / f"round-{self.round}"
        self._decisions_at_round = self.decisions()
        self.learn_button.enabled, self.cancel_button.enabled, self.bar.visible = False, True, True
        self.info.value = f"round {self.round}: learning from {sum(len(r.reviewed) for r in reviews)} reviewed " \
                          f"objects …"
        steps = learn_and_predict_steps(reviews, self._base(), out, window, um, seconds=float(self.seconds.value),
                                        round_no=self.round)
        layer = dock.layer
        self.worker = start_job(steps, f"Learning from reviews (round {self.round})", bar=self.bar,
                                on_done=lambda result: self._round_done(layer, result),
                                on_error=self._failed, on_abort=self._aborted, on_finished=self._finished)
        return self.worker

    @staticmethod
    def _window_image(image, session) -> np.ndarray:
        """The image under the reviewed labels (a window of a large slide, or the whole image)."""
        data = image.data[0] if image.multiscale else image.data
        (oy, ox), (h, w) = session.offset, session.labels.shape
        return np.asarray(data[oy : oy + h, ox : ox + w])

    def cancel(self):
        if self.worker is not None:
            self.worker.quit()

    def _failed(self, exc):
        self.round -= 1
        self.dock._fail(exc if isinstance(exc, (InputError, ModelError)) else f"round failed: {exc}")

    def _aborted(self):
        self.round -= 1
        self.info.value = "round cancelled: the previous model stays in use"

    def _finished(self):
        self.worker = None
        self.learn_button.enabled, self.cancel_button.enabled, self.bar.visible = True, False, False

    def _round_done(self, layer, result):
        """The new model is offered by the Segment dock; the unreviewed objects are its now."""
        out, history, seg = result
        dock = self.dock
        self.model_path = Path(out)
        dock.state.models = (*dock.state.models, str(out))
        if layer is not dock.layer or dock.session is None:
            self.info.value = f"round {self.round} saved to {out} (the layer changed meanwhile)"
            return
        session = dock.session
        labels = np.asarray(seg.labels)
        if labels.shape != session.labels.shape:
            self.info.value = f"round {self.round}: prediction {labels.shape} does not fit the labels"
            return
        self.previous = session.labels.copy()
        classes = {int(o["id"]): (session.review.default_class, o.get("confidence")) for o in seg.objects}
        before = session.review.counts()["unreviewed"]
        dock._run(lambda: session.repredict(labels, classes, f"round {self.round} prediction"))
        from napari_ftu.review.active import agreement

        session.review.threshold = float(seg.threshold)
        session.review.agreement = {i: agreement(session.labels, self.previous, r.box, i)  # the models' overlap
                                    for i, r in session.review.rows.items() if r.status == "unreviewed"}
        self._find_misses(seg)
        dock.sort.value = "most doubtful first"
        dock.refresh_table()
        self.info.value = (f"round {self.round}: {history['steps']} steps in {history['seconds']:.0f} s; "
                           f"{before} unreviewed objects replaced by {session.review.counts()['unreviewed']}, "
                           f"{len(self.misses)} possible misses; model {out.name} is in the Segment dock")
        show_info(self.info.value)

    # --- possible misses -------------------------------------------------------------------------
    def _find_misses(self, seg):
        from napari_ftu.review.active import possible_misses

        session = self.dock.session
        prob = np.asarray(seg.class_probability(), np.float32)
        blocked = np.zeros(session.labels.shape, bool)
        if session.rejected is not None:
            blocked |= session.rejected > 0
        for b in session.done:
            blocked[b] = True
        self.misses = possible_misses(prob, session.labels, seg.threshold, max(seg.min_area_px, 16), blocked=blocked,
                                      scale=seg.prob_scale)
        self._miss_index = -1
        self._show_misses()

    def _show_misses(self):
        dock = self.dock
        name = MISS_LAYER.format(dock.layer.name)
        data = np.zeros(dock.session.labels.shape, np.uint16)
        for k, c in enumerate(self.misses, start=1):
            data[c.box][c.mask] = k
        if name in dock._viewer.layers:
            dock._viewer.layers[name].data = data
        elif self.misses:
            dock._viewer.add_labels(data, name=name, opacity=0.35, scale=dock.layer.scale,
                                    translate=dock.layer.translate, blending="translucent")
            dock._viewer.layers.selection.active = dock.layer
        for b in (self.miss_button, self.accept_miss_button, self.dismiss_miss_button):
            b.enabled = bool(self.misses)

    def next_miss(self):
        if not self.misses:
            self.info.value = "no possible misses"
            return None
        self._miss_index = (self._miss_index + 1) % len(self.misses)
        c = self.misses[self._miss_index]
        layer = self.dock.layer
        self.dock._viewer.scene.camera.center = tuple(layer.data_to_world(c.centroid)[-2:])
        self.info.value = f"possible miss {self._miss_index + 1}/{len(self.misses)} (probability {c.confidence:.2f}):" \
                          f" Shift+A accept, Shift+R dismiss"
        return c

    def _take_miss(self, status: str):
        from napari_ftu.review.editing import add_mask

        if not self.misses:
            self.info.value = "no possible misses"
            return None
        k = max(self._miss_index, 0)
        c = self.misses.pop(k)
        self._miss_index = k - 1
        session = self.dock.session
        try:
            edit = add_mask(session.labels, c.box, c.mask, reserved=session.reserved(), name="possible miss")
        except EditError as exc:
            return self.dock._fail(exc)
        self.dock._run(lambda: session.apply(edit, "accepted"))
        if status == "rejected":  # kept as a rejected object: background the next round learns
            self.dock._run(lambda: session.reject(edit.created))
        self._show_misses()
        return c

    def accept_miss(self):
        """The current possible miss is an FTU."""
        return self._take_miss("accepted")

    def dismiss_miss(self):
        """The current possible miss is not an FTU: background the model should learn."""
        return self._take_miss("rejected")
