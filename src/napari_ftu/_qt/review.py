"""Review dock: a per-object review queue with undoable corrections and autosave.

A thin view on :class:`napari_ftu.review.session.ReviewSession` (pixels, statuses, one undo
history), :mod:`napari_ftu.review.autosave` (sidecar sessions) and :mod:`napari_ftu.review.label_store`
(full-resolution windows of large slides). Its corrections are :mod:`napari_ftu._qt.review_edits`,
its large-slide windows :mod:`napari_ftu._qt.review_windows` (both mixed into the dock). Keys (with
the labels layer selected):
N / Shift+N next / previous unreviewed, A accept, R reject, C set class, Shift+M merge,
Shift+D delete, Shift+H fill holes, Alt+= / Alt+- dilate / erode, Ctrl+Z / Ctrl+Shift+Z; and
for learning from the reviews (:mod:`napari_ftu._qt.learn`) D done here, L learn, G / Shift+A /
Shift+R next / take / drop a possible miss.
"""

from __future__ import annotations

import atexit
import math
import time
import weakref

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    SpinBox,
    create_widget,
)
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QItemSelectionModel, Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QGridLayout,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_ftu._qt.common import Dock, button, scroll_area, status_line
from napari_ftu._qt.learn import LearnPanel
from napari_ftu._qt.review_edits import ERRORS, EditActions
from napari_ftu._qt.review_windows import SlideWindows
from napari_ftu._qt.state import is_edited, mark_edited, session_of, share_session
from napari_ftu.boxes import box_at, size
from napari_ftu.errors import EditError, SessionError
from napari_ftu.review.autosave import (
    DEFAULT_INTERVAL_S,
    Autosaver,
    SessionStore,
    carry_statuses,
    default_project_folder,
    session_folder,
)
from napari_ftu.review.label_store import LabelStore
from napari_ftu.review.session import ReviewSession
from napari_ftu.review.table import SORTS, STATUSES

COLUMNS = ["id", "class", "area µm²", "confidence", "status"]
HEADER_SORTS = {0: "id", 1: "class", 2: "large first", 3: "low confidence first", 4: "status"}
STATUS_COLOURS = {"unreviewed": "#f6d32d", "accepted": "#33d17a", "edited": "#62a0ea", "rejected": "#e01b24"}
CLASSES = ["glomerulus", "crypt", "alveolus", "gland", "white pulp", "vessel", "FTU"]
SECTIONS = ("queue", "review", "edit", "learn", "more", "status")  # top to bottom; "learn": learning from reviews


class ReviewWidget(EditActions, SlideWindows, Dock):
    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(viewer)
        self.session: ReviewSession | None = None
        self.autosaver: Autosaver | None = None
        self.layer = None
        self.store: LabelStore | None = None
        self.window = None  # (layer, box) of an open large-slide window
        self._order: list[int] = []
        self._syncing = False
        self.labels_layer = create_widget(annotation=napari.layers.Labels, label="labels")
        self.sort = ComboBox(label="sort", choices=list(SORTS), value="id")
        self.status_filter = ComboBox(label="show", choices=["all", *STATUSES], value="all")
        self.max_conf = FloatSpinBox(label="confidence ≤", value=1.0, min=0.0, max=1.0, step=0.05)
        self.counts = status_line("no labels layer")
        self.status = self.counts  # the status line Dock._fail writes to
        # Buttons are short, with their key in the label and what they do in the tooltip; they sit
        # in grids (a toolbar), so the dock fits a laptop screen beside the Segment dock.
        self.prev_button = button("◀ ⇧N", lambda: self.go_unreviewed(-1), tooltip="previous unreviewed (Shift+N)")
        self.next_button = button("N ▶", lambda: self.go_unreviewed(1), tooltip="next unreviewed (N)")
        self.accept_button = button("Accept A", self.accept, tooltip="accept, then go to the next (A)")
        self.reject_button = button("Reject R", self.reject, tooltip="reject, then go to the next (R)")
        self.cls = ComboBox(label="class", choices=CLASSES, value="glomerulus")
        self.class_button = button("Set class C", self.set_class, tooltip="give the selected objects this class (C)")
        self.merge_button = button("Merge ⇧M", self.merge, tooltip="merge the selected objects (Shift+M)")
        self.delete_button = button("Delete ⇧D", self.delete, tooltip="delete the selected objects (Shift+D)")
        self.fill_button = button("Fill ⇧H", self.fill_holes, tooltip="fill holes in the selected objects, else "
                                                                      "in all (Shift+H)")
        self.relabel_button = button("Relabel", self.relabel, tooltip="renumber the objects 1…n")
        self.dilate_button = button("Grow Alt+=", lambda: self.grow(1),
                                    tooltip="dilate the selected object by 'grow/shrink px' (Alt+=)")
        self.erode_button = button("Shrink Alt+-", lambda: self.grow(-1),
                                   tooltip="erode the selected object by 'grow/shrink px' (Alt+-)")
        self.split_line_button = button("Split line", self.split_by_line,
                                        tooltip="split by a line drawn in the 'FTU cut' layer (press, draw, press)")
        self.split_ws_button = button("Split seeds", self.split_watershed,
                                      tooltip="split by watershed from seeds clicked in the 'FTU seeds' layer")
        self.brush_button = button("+ Brush", lambda: self.new_object("paint"), tooltip="paint a new object")
        self.polygon_button = button("+ Polygon", lambda: self.new_object("polygon"), tooltip="draw a new object")
        self.undo_button = button("Undo ^Z", self.undo, tooltip="undo (Ctrl+Z)")
        self.redo_button = button("Redo ^⇧Z", self.redo, tooltip="redo (Ctrl+Shift+Z)")
        # rarely used: folded under "More"
        self.min_area = FloatSpinBox(label="min area µm²", value=100.0, min=0.0, max=1e9, step=50.0)
        self.small_button = button("Remove smaller objects", self.remove_small)
        self.grow_px = SpinBox(label="grow/shrink px", value=2, min=1, max=100)
        self.colour = CheckBox(text="colour objects by status", value=True)
        self.project = FileEdit(label="sessions", mode="d", value=str(default_project_folder()),
                                tooltip="for images without a writable folder; others get <slide>.ftu/ beside them")
        self.interval = SpinBox(label="autosave every s", value=int(DEFAULT_INTERVAL_S), min=1, max=30)
        self.save_label = status_line("")
        self.window_button = button("Edit full-res window", lambda: self.edit_window(),
                                    tooltip="edit a full-resolution window of the label store (the view, or the "
                                            "last box of the 'FTU box' layer)")
        self.save_window_button = button("Save window", self.save_window, tooltip="write the window into the label "
                                                                                  "store")
        self.prev_image = button("◀ Image", lambda: self.step_image(-1), tooltip="previous image of the dataset")
        self.next_image = button("Image ▶", lambda: self.step_image(1), tooltip="next image of the dataset")
        self.retrain_button = button("Retrain on my corrections…", self.retrain)
        self.learning = LearnPanel(self)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(22)
        self.table.setMinimumHeight(150)
        self.table.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.horizontalHeader().setMinimumSectionSize(24)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # the columns fit the dock
        for col, width in enumerate([36, 82, 62, 74]):
            self.table.setColumnWidth(col, width)
        self._build_layout()
        for w in (self.sort, self.status_filter, self.max_conf):
            w.changed.connect(self.refresh_table)
        self.colour.changed.connect(self._recolour)
        self.labels_layer.changed.connect(lambda: self.bind(self.labels_layer.value))
        self.table.itemSelectionChanged.connect(self._on_rows_selected)
        self.table.horizontalHeader().sectionClicked.connect(lambda col: setattr(self.sort, "value", HEADER_SORTS[col]))
        viewer.layers.events.removing.connect(self._on_layer_removing)
        self.state.events.edited.connect(self._on_edited)
        self.state.events.queue_ids.connect(lambda *_: self.refresh_table())
        self.timer = QTimer()
        self.timer.setInterval(1000)
        self.timer.timeout.connect(self.autosave_tick)
        self.timer.start()
        self.native.destroyed.connect(self._on_destroyed)
        atexit.register(_close_at_exit, weakref.ref(self))  # napari quit without closing its windows
        self.bind(self.labels_layer.value)

    # --- layout -------------------------------------------------------------------------------
    def _build_layout(self):
        """The dock as named sections (:data:`SECTIONS`, top to bottom) in one scroll area: it
        never asks the window for more height than a laptop screen has, beside other docks.
        The magicgui fields stay this container's children (napari resets their choices)."""
        from superqt import QCollapsible

        filters = Container(widgets=[self.labels_layer, self.sort, self.status_filter, self.max_conf])
        cls_row = Container(layout="horizontal", widgets=[self.cls, self.class_button])
        more = Container(widgets=[self.min_area, self.small_button, self.grow_px, self.colour,
                                  Container(layout="horizontal", widgets=[self.window_button, self.save_window_button],
                                            labels=False),
                                  Container(layout="horizontal", widgets=[self.prev_image, self.next_image],
                                            labels=False),
                                  self.retrain_button, self.project, self.interval])
        for c in (filters, cls_row, more):
            c.margins = (0, 0, 0, 0)
        self.labels = False  # the sections name their own fields
        self.extend([filters, self.counts, cls_row, more, self.save_label])
        for w in (filters, self.counts, cls_row, more, self.save_label):  # Qt places them in the sections below
            self.native.layout().removeWidget(w.native)
        self.more = QCollapsible("More: clean-up, large slides, images, autosave")
        self.more.setContentsMargins(0, 0, 0, 0)
        self.more.addWidget(more.native)
        self.more.collapse(animate=False)
        self._sections: dict = {}
        self.page = QWidget()
        page_layout = QVBoxLayout(self.page)
        page_layout.setContentsMargins(0, 0, 0, 0)
        page_layout.setSpacing(4)
        self.add_section("queue", filters.native, self.counts.native, self.table)
        self.add_section("review", _grid([self.prev_button, self.next_button, self.accept_button, self.reject_button]),
                         cls_row.native)
        self.add_section("edit", _grid([self.merge_button, self.delete_button, self.fill_button, self.relabel_button,
                                        self.dilate_button, self.erode_button, self.split_line_button,
                                        self.split_ws_button, self.brush_button, self.polygon_button,
                                        self.undo_button, self.redo_button]))
        learn = self.learning
        self.add_section("learn", _grid(learn.buttons, columns=3), learn.settings.native, learn.bar.native,
                         learn.info.native)
        self.add_section("more", self.more)
        self.add_section("status", self.save_label.native)
        self.scroll = scroll_area(self.page)
        left, top, _, bottom = self.native.layout().getContentsMargins()
        self.native.layout().setContentsMargins(left, top, 0, bottom)  # the scroll bar takes the right margin's place
        self.native.layout().addWidget(self.scroll)

    def add_section(self, name: str, *widgets):
        """Put a section of the dock in its place in :data:`SECTIONS` (Qt or magicgui widgets,
        stacked); "learn" is kept free for learning from the reviews. Returns its QWidget."""
        if name not in SECTIONS or name in self._sections:
            raise ValueError(f"unknown or taken section {name!r}; one of {SECTIONS}")
        section = QWidget()
        section.setObjectName(f"review-{name}")
        layout = QVBoxLayout(section)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        for w in widgets:
            layout.addWidget(getattr(w, "native", w))
        self._sections[name] = section
        place = sum(1 for other in SECTIONS[:SECTIONS.index(name)] if other in self._sections)
        self.page.layout().insertWidget(place, section, 1 if name == "queue" else 0)
        return section

    # --- binding a labels layer -----------------------------------------------------------------
    def _image_of(self, layer):
        source = layer.metadata.get("source")
        if source and source in self._viewer.layers:
            return self._viewer.layers[source]
        return next((lyr for lyr in self._viewer.layers if isinstance(lyr, napari.layers.Image)), None)

    def bind(self, layer):
        """Review ``layer``: save the previous layer's session, restore this one's if saved."""
        if layer is self.layer and self.session is not None:
            return
        self._close_session()
        self.layer = layer
        if layer is None or layer.multiscale:
            self.counts.value = ("multiscale labels: open a full-resolution window to edit" if layer is not None
                                 else "no labels layer")
            self.table.setRowCount(0)
            return
        if not isinstance(layer.data, np.ndarray):
            layer.data = np.asarray(layer.data)
        um = layer.metadata.get("um_per_px")
        store = self._store_for(layer)
        offset = tuple(int(v) for v in layer.metadata.get("window_offset", (0, 0)))
        saved = shared = session_of(layer)  # another dock's (the Annotate dock's clicks): one history
        try:
            if shared is None:
                saved = store.restore(layer.data.shape, offset)
        except (SessionError, OSError) as exc:  # damaged or of another size: kept aside, a fresh session starts
            self.save_label.value = f"Error: {exc}"
            show_error(str(exc))
        self._notify(store)
        if shared is not None:
            self.session = shared
        elif saved is not None and saved.in_store and not np.array_equal(saved.labels, layer.data):
            # Everything here went into the label store, which has changed since (an overlapping
            # window was saved): the store wins; statuses of unchanged objects are kept.
            from napari_ftu.review.table import Review

            review = Review.from_labels(layer.data, saved.review.um_per_px, None, saved.review.default_class)
            kept = carry_statuses(saved.review, review)
            show_info(f"{layer.name}: the label store changed since this window was saved into it; showing the "
                      f"store, with the review of the {kept} unchanged objects")
            self.session = ReviewSession(layer.data, review, offset=offset)
        elif saved is not None:
            layer.data[...] = saved.labels
            layer.refresh()
            self.session = saved.into(ReviewSession(layer.data, saved.review, offset=offset))
            when = time.strftime("%H:%M:%S", time.localtime(saved.meta.get("saved_at", 0)))
            show_info(f"{layer.name}: restored the review saved at {when} ({saved.review.summary()})")
        else:
            from napari_ftu.review.table import Review

            review = Review.from_labels(layer.data, um, layer.features if len(layer.features) else None,
                                        layer.metadata.get("class") or "FTU")
            self.session = ReviewSession(layer.data, review, offset=offset)
        share_session(layer, self.session)
        self.session.review.threshold = float(layer.metadata.get("threshold") or 0.5)
        self.autosaver = Autosaver(self.session, store, self.interval.value, {"layer": layer.name})
        self._hook(layer)
        self.refresh()

    def _session_folder(self, layer):
        image = self._image_of(layer)
        name = image.name if image is not None else layer.name
        path = image.metadata.get("path") if image is not None else None
        return session_folder(name, path, project=self.project.value)

    def _store_for(self, layer) -> SessionStore:
        """The layer's session file; each full-resolution window of a large slide has its own."""
        window = None
        if "window_offset" in layer.metadata:
            window = box_at(*layer.metadata["window_offset"], *layer.data.shape[-2:])
        return SessionStore(self._session_folder(layer), layer.name, window)

    def _close_session(self):
        """Save the bound layer's session, give its lock back and unbind it."""
        if self.autosaver is not None:
            self._save(self.autosaver.close)
        self._unhook()
        self.layer = self.session = self.autosaver = None

    def _on_destroyed(self, *_):
        """The dock is gone (viewer closed): save and unlock without touching Qt any more."""
        self.timer.stop()
        self._close_quietly()

    def _close_quietly(self):
        saver, self.autosaver = self.autosaver, None
        if saver is not None:
            try:
                saver.close()
            except Exception:  # nothing left to show it in; the last autosave stays on disk
                pass

    def _hook(self, layer):
        layer.events.paint.connect(self._on_paint)
        layer.events.selected_label.connect(self._on_selected_label)
        layer.events.data.connect(self._on_data)
        layer.events.features.connect(self._on_features)
        layer.mouse_drag_callbacks.append(self._on_click)
        for key, action in [("Control-Z", self.undo), ("Control-Shift-Z", self.redo),
                            ("n", lambda: self.go_unreviewed(1)), ("Shift-N", lambda: self.go_unreviewed(-1)),
                            ("a", self.accept), ("r", self.reject), ("c", self.set_class),
                            ("Shift-M", self.merge), ("Shift-D", self.delete), ("Shift-H", self.fill_holes),
                            ("Alt-=", lambda: self.grow(1)), ("Alt--", lambda: self.grow(-1))]:
            layer.bind_key(key, lambda _layer, act=action: act(), overwrite=True)
        self.learning.bind_keys(layer)

    def _unhook(self):
        layer = self.layer
        if layer is None:
            return
        for event, handler in [(layer.events.paint, self._on_paint),
                                (layer.events.selected_label, self._on_selected_label),
                                (layer.events.data, self._on_data), (layer.events.features, self._on_features)]:
            event.disconnect(handler)
        if self._on_click in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.remove(self._on_click)

    def _on_data(self, _event=None):
        """A new segmentation replaced the layer's array (the Segment dock reuses a layer nobody
        edited): review the new objects."""
        layer = self.layer
        if layer is None or self.session is None or self.session.labels is layer.data or is_edited(layer):
            return
        self._close_session()
        from napari_ftu.review.table import Review

        if not isinstance(layer.data, np.ndarray):
            layer.data = np.asarray(layer.data)
        self.layer = layer
        offset = tuple(int(v) for v in layer.metadata.get("window_offset", (0, 0)))
        review = Review.from_labels(layer.data, layer.metadata.get("um_per_px"),
                                    layer.features if len(layer.features) else None,
                                    layer.metadata.get("class") or "FTU")
        self.session = ReviewSession(layer.data, review, offset=offset)
        share_session(layer, self.session)
        self.autosaver = Autosaver(self.session, self._store_for(layer), self.interval.value, {"layer": layer.name})
        self._hook(layer)
        self.refresh()

    def _on_features(self, _event=None):
        """The segmentation wrote its features (confidence, class) and pixel size after the
        queue was built (this dock opened before the run): the queue takes them."""
        if self.layer is None or self.session is None or self.session.labels is not self.layer.data:
            return
        if self.session.review.adopt(self.layer.features, self.layer.metadata.get("um_per_px")):
            self.refresh_table()

    def _on_layer_removing(self, event):
        layer = event.value if hasattr(event, "value") else None
        if layer is None:
            layer = self._viewer.layers[event.index]
        if layer is self.layer:
            self._close_session()

    def _on_edited(self, edited):
        """Another dock changed objects through the shared session: show its change."""
        layer, _ = edited
        if layer is self.layer and self.session is not None:
            self.refresh()

    # --- table ----------------------------------------------------------------------------
    def refresh(self, region=None):
        """Redraw the layer (``region``: the box that changed), the colours and the table."""
        if self.layer is not None:
            self.layer.refresh()
        self._recolour()
        self.refresh_table()

    def rows(self):
        if self.session is None:
            return []
        status = None if self.status_filter.value == "all" else self.status_filter.value
        conf = None if self.max_conf.value >= 1.0 else self.max_conf.value
        rows = self.session.review.table(self.sort.value, status, conf)
        shown = self.state.queue_ids  # the Measurements dock's selection: (layer, ids) or None
        return rows if shown is None or shown[0] is not self.layer else [r for r in rows if r.id in shown[1]]

    def refresh_table(self):
        rows = self.rows()
        keep = set(self.selected_ids())
        self._order = [r.id for r in rows]
        self._syncing = True
        try:
            self.table.setSortingEnabled(False)
            self.table.setRowCount(len(rows))
            for i, r in enumerate(rows):
                values = [str(r.id), r.cls, f"{r.area_um2:.0f}",
                          "–" if math.isnan(r.confidence) else f"{r.confidence:.2f}", r.status]
                for j, v in enumerate(values):
                    item = self.table.item(i, j)
                    if item is None:
                        item = QTableWidgetItem()
                        self.table.setItem(i, j, item)
                    item.setText(v)
                if r.id in keep:
                    self._select_row(i)
        finally:
            self._syncing = False
        self.counts.value = self.session.review.summary() if self.session else "no labels layer"
        self.undo_button.enabled = bool(self.session and self.session.history.can_undo)
        self.redo_button.enabled = bool(self.session and self.session.history.can_redo)

    def _select_row(self, i: int):
        """Add row ``i`` to the selection (``selectRow`` would replace it)."""
        flags = QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows
        self.table.selectionModel().select(self.table.model().index(i, 0), flags)

    def selected_ids(self) -> list[int]:
        rows = sorted({i.row() for i in self.table.selectionModel().selectedRows()})
        return [self._order[r] for r in rows if r < len(self._order)]

    def select(self, ids, focus: bool = True):
        """Select the rows of ``ids`` (the first becomes the layer's selected label) and centre on it."""
        ids = [int(i) for i in ids]
        self._syncing = True
        try:
            self.table.clearSelection()
            for obj in ids:
                if obj in self._order:
                    self._select_row(self._order.index(obj))
        finally:
            self._syncing = False
        if ids:
            if self.layer is not None and self.layer.selected_label != ids[0]:
                self._syncing = True
                try:
                    self.layer.selected_label = ids[0]
                finally:
                    self._syncing = False
            if focus:
                self.focus(ids[0])
            if ids[0] in self._order:
                self.table.scrollToItem(self.table.item(self._order.index(ids[0]), 0))

    def focus(self, obj: int):
        """Centre the view on the object and zoom so that it fills about a third of the canvas."""
        row = self.session.review.rows.get(obj) if self.session else None
        if row is None or self.layer is None:
            return
        h, w = size(row.box)
        centre = self.layer.data_to_world(row.centroid)
        self._viewer.scene.camera.center = tuple(centre[-2:])
        scale = np.abs(np.asarray(self.layer.scale[-2:], float))
        extent = max(h * scale[0], w * scale[1], 1e-9)
        self._viewer.scene.camera.zoom = max(min(self._viewer.canvas.size) / 3 / extent, 1e-6)

    def _on_rows_selected(self):
        if self._syncing:
            return
        ids = self.selected_ids()
        if ids:
            self.select(ids)

    def _on_selected_label(self, event=None):
        if self._syncing or self.layer is None:
            return
        obj = int(self.layer.selected_label)
        if self.session and obj in self.session.review.rows:
            self.select([obj], focus=False)

    def _on_click(self, layer, event):
        """In pan/zoom mode a click (not a drag) on an object selects its row; Shift adds it."""
        if layer.mode != "pan_zoom":
            return
        start = np.asarray(event.position)
        yield
        while event.type == "mouse_move":
            yield
        if np.abs(np.asarray(event.position) - start).max() > 3 * np.abs(layer.scale[-1]):
            return
        value = layer.get_value(event.position, world=True)
        obj = int(value) if value is not None else 0
        if obj and self.session and obj in self.session.review.rows:
            ids = self.selected_ids() + [obj] if "Shift" in event.modifiers else [obj]
            self.select(ids, focus=False)

    def _recolour(self):
        if self.layer is None or self.session is None:
            return
        from napari.utils.colormaps import DirectLabelColormap

        if not self.colour.value:
            if isinstance(self.layer.colormap, DirectLabelColormap) and self.layer.metadata.get("_status_colours"):
                from napari.utils.colormaps import label_colormap

                self.layer.colormap = label_colormap()
                self.layer.metadata.pop("_status_colours", None)
            return
        colours = {None: STATUS_COLOURS["edited"], 0: "transparent"}
        for obj, row in self.session.review.rows.items():
            if row.status != "rejected":
                colours[obj] = STATUS_COLOURS[row.status]
        self.layer.colormap = DirectLabelColormap(color_dict=colours)
        self.layer.metadata["_status_colours"] = True

    # --- review actions ---------------------------------------------------------------------------
    def current(self) -> list[int]:
        """The objects an action applies to: the selected rows, else the layer's selected label."""
        ids = self.selected_ids()
        picked = self.layer.selected_label if self.layer is not None else None
        if not ids and self.session and picked in self.session.review.rows:
            ids = [int(picked)]
        return ids

    def _run(self, action, then_next: bool = False):
        if self.session is None:
            return self._fail("choose a Labels layer (not multiscale) to review")
        try:
            result = action()
        except ERRORS as exc:
            return self._fail(exc)
        step = result if hasattr(result, "boxes") else None
        if self.layer is not None:
            mark_edited(self.layer)  # the Segment dock will not overwrite this layer
        if self.layer is not None and step is not None and step.boxes:
            self.layer.events.data(value=self.layer.data, action="changed", data_indices=(), value_indices=())
        self.refresh()
        self.learning.maybe_learn()
        if then_next:
            self.go_unreviewed(1)
        elif step is not None and step.state_after:
            alive = [i for i, r in step.state_after.items()
                     if isinstance(i, int) and r is not None and r.status != "rejected"]
            if alive:
                self.select(alive[:1], focus=False)
        return result

    def go_unreviewed(self, step: int = 1):
        if self.session is None:
            return None
        current = self.current()
        obj = self.session.review.next_unreviewed(current[0] if current else None, self._order, step)
        if obj is None:
            show_info("every object in the list is reviewed")
            return None
        self.select([obj])
        return obj

    def accept(self):
        return self._run(lambda: self.session.accept(self._need()), then_next=True)

    def reject(self):
        return self._run(lambda: self.session.reject(self._need()), then_next=True)

    def set_class(self):
        return self._run(lambda: self.session.set_class(self._need(), self.cls.value))

    def _need(self, n: int = 1) -> list[int]:
        ids = self.current()
        if len(ids) < n:
            raise EditError("select an object first (click it, or a row)" if n == 1 else
                            f"select at least {n} objects (Shift+click, or Shift/Ctrl+click rows)")
        return ids

    # --- images, autosave, retraining -------------------------------------------------------------------
    def step_image(self, step: int):
        """Previous / next image of the dataset open in the Load dock (this image's state is saved)."""
        dataset, index = self.state.dataset, self.state.index + step
        if dataset is None:
            return self._fail("open a dataset folder in the Load dock first")
        if not 0 <= index < len(dataset):
            return None
        self.save_now()
        self.state.index = index  # the Load dock shows it
        return index

    def autosave_tick(self):
        if self.autosaver is not None:
            self.autosaver.interval = self.interval.value
            self._save(self.autosaver.tick)

    def save_now(self):
        if self.autosaver is not None:
            self._save(self.autosaver.save_now)

    def _save(self, save):
        """Run an autosave step; say when it wrote, and show a failure instead of raising."""
        saver = self.autosaver
        try:
            if save():
                self.save_label.value = (f"autosaved {time.strftime('%H:%M:%S')} in "
                                         f"{saver.last_seconds * 1000:.0f} ms → {saver.store.save_path}")
        except (OSError, ValueError, MemoryError) as exc:
            self._fail(f"autosave failed (retried in {saver.interval:.0f} s): {exc}")
        self._notify(saver.store)

    def _notify(self, store):
        """Show what the session store has to tell (another viewer, a file kept aside)."""
        for message in store.take_notices():
            self.save_label.value = message
            show_warning(message)

    def retrain(self):
        """Open the Train dock on "layers in the viewer" with this image and corrected labels."""
        if self.layer is None:
            return self._fail("choose the corrected Labels layer first")
        self.save_now()
        _, train = self._viewer.window.add_plugin_dock_widget("napari-ftu", "Train")  # the open one, if any
        self.state.retrain = (self._image_of(self.layer), self.layer)
        return train


def _grid(buttons, columns: int = 4) -> QWidget:
    """Small buttons in rows of ``columns``, sharing the dock's width: a toolbar."""
    widget = QWidget()
    grid = QGridLayout(widget)
    grid.setContentsMargins(0, 0, 0, 0)
    grid.setSpacing(2)
    for k, b in enumerate(buttons):
        b.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        b.native.setMinimumWidth(0)
        grid.addWidget(b.native, k // columns, k % columns)
    for col in range(columns):
        grid.setColumnStretch(col, 1)
    return widget


def _close_at_exit(ref):
    widget = ref()
    if widget is not None:
        widget._close_quietly()
