"""The options of a segmentation run, checked where they enter, and the size rules that decide
where its outputs go.

:class:`SegmentOptions` is what a user chose (CLI flags, dock widgets, a batch's settings);
``None`` means "the model card's value". :meth:`SegmentOptions.resolve` fills those from the
card once, so every caller runs with the same numbers. Every number is validated on
construction: a bad value is one :class:`OptionError` naming the option, never a traceback
or a silent "0 objects" later.

:func:`plan_outputs` holds the only size rules: when outputs stay in memory at the image's own
size, when they stream into a zarr store on the model grid, and when a batch splits a slide
into row bands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from napari_ftu.errors import OptionError

MIN_TILE_SIZE = 32  # the networks downsample 5 times: smaller tiles have no context left
MAX_BATCH_SIZE = 1024
PROB_DTYPES = ("uint8", "float16")

# Size rules (pixels). The in-memory outputs of a run at the image's size cost about 8 bytes per
# image pixel (float32 probability + int32 labels), plus the resampling temporaries.
MAX_FULL_RES_PIXELS = 400e6  # above this (image px), outputs stay on the model grid, in a store
STORE_ABOVE_PIXELS = 64e6  # model-grid outputs larger than this stream into a zarr store on disk
BAND_ABOVE_PIXELS = MAX_FULL_RES_PIXELS  # a batch splits slides larger than this into row bands
BAND_PIXELS = 64e6  # model-grid pixels per band
READ_LEVEL_BELOW_BYTES = 256 * 2**20  # a lazily opened level the model reads is decoded once when smaller




def max_tile_size() -> int:
    from napari_ftu.models.card import MAX_TILE_SIZE

    return MAX_TILE_SIZE


def check_positive(value, what: str = "µm/px") -> float | None:
    """A pixel size (or any size or rate) as a float: ``None`` stays ``None``; anything not finite
    and > 0 is refused.

    Parameters
    ----------
    value : number or str, optional
        What the user typed or a file said.
    what : str
        Its name, for the error message.

    Returns
    -------
    float or None

    Raises
    ------
    OptionError
        Not a number, not finite, or not > 0.
    """
    if value is None:
        return None
    number = _number(value, what)
    if not number > 0 or not math.isfinite(number):
        raise OptionError(f"{what} must be a finite number > 0, got {value!r}")
    return number


def check_int(value, what: str, low: int, high: int | None = None) -> int:
    """An integer within ``[low, high]``, else :class:`OptionError` naming ``what``.

    Parameters
    ----------
    value : int
        A whole float (``256.0``) is accepted; booleans are not.
    what : str
        Its name, for the error message.
    low, high : int
        Inclusive bounds (``high`` None: no upper bound).

    Returns
    -------
    int

    Raises
    ------
    OptionError
    """
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise OptionError(f"{what} must be a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f">= {low}"
        raise OptionError(f"{what} must be {bounds}, got {value}")
    return int(value)


def _number(value, what: str) -> float:
    if isinstance(value, bool):
        raise OptionError(f"{what} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise OptionError(f"{what} must be a number, got {value!r}") from None


@dataclass(frozen=True)
class SegmentOptions:
    """How to run a model over an image. ``None`` fields take the model card's value.

    Parameters
    ----------
    tile_size, overlap : int, optional
        Tiling in model pixels.
    threshold : float, optional
        Probability threshold (0..1).
    min_object_um2 : float, optional
        Smaller objects are dropped.
    batch_size : int
        Tiles per model call (halved on out-of-memory).
    tta : bool
        Average the 8 flips and rotations (and keep their spread as uncertainty).
    blend : str
        Tile blending window: ``"taper"`` (cosine over the overlap) or ``"gaussian"``.
    skip_background : bool
        Do not run the model on tiles without tissue.
    watershed : bool
        Split touching objects.
    class_index : int
        The class whose objects are labelled.
    prob_dtype : str
        Storage type of probability stores (``"uint8"`` is 4× smaller than float32).
    prefetch : int
        Tile batches read ahead of the model.
    edge_margin : int, optional
        Model pixels of mirrored image added past every image edge (default: the overlap), so
        that an object cut by the edge is seen as tiles inside see theirs; 0: none.

    Raises
    ------
    OptionError
        A value out of range, naming the option.
    """

    tile_size: int | None = None
    overlap: int | None = None
    threshold: float | None = None
    min_object_um2: float | None = None
    batch_size: int = 4  # tiles per model call (halved on out-of-memory)
    tta: bool = False
    blend: str = "taper"
    skip_background: bool = True
    watershed: bool = False
    class_index: int = 0
    prob_dtype: str = "uint8"  # of probability stores
    prefetch: int = 2  # tile batches read ahead of the model
    edge_margin: int | None = None  # mirrored pixels past the image's edges (default: the overlap)

    def __post_init__(self):
        from napari_ftu.engine.tiling import BLENDS

        put = object.__setattr__  # frozen: normalise the numbers once, here
        if self.tile_size is not None:
            put(self, "tile_size", check_int(self.tile_size, "tile size", MIN_TILE_SIZE, max_tile_size()))
        if self.overlap is not None:
            put(self, "overlap", check_int(self.overlap, "overlap", 0))
            if self.tile_size is not None and self.overlap >= self.tile_size:
                raise OptionError(f"overlap must be smaller than the tile size, got overlap {self.overlap} "
                                   f"with tile size {self.tile_size}")
        if self.threshold is not None:
            value = _number(self.threshold, "threshold")
            if not (math.isfinite(value) and 0 <= value <= 1):
                raise OptionError(f"threshold must be a number from 0 to 1, got {self.threshold!r}")
            put(self, "threshold", value)
        if self.min_object_um2 is not None:
            value = _number(self.min_object_um2, "minimum object size")
            if not (math.isfinite(value) and value >= 0):
                raise OptionError(f"minimum object size must be a finite number >= 0 µm², got {self.min_object_um2!r}")
            put(self, "min_object_um2", value)
        if self.edge_margin is not None:
            put(self, "edge_margin", check_int(self.edge_margin, "edge margin", 0))
        put(self, "batch_size", check_int(self.batch_size, "batch size", 1, MAX_BATCH_SIZE))
        put(self, "class_index", check_int(self.class_index, "class index", 0))
        put(self, "prefetch", check_int(self.prefetch, "prefetch", 0, 64))
        for name in ("tta", "skip_background", "watershed"):
            if not isinstance(getattr(self, name), bool):
                raise OptionError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.blend not in BLENDS:
            raise OptionError(f"unknown blend {self.blend!r}; use one of {', '.join(BLENDS)}")
        if self.prob_dtype not in PROB_DTYPES:
            raise OptionError(f"unknown probability dtype {self.prob_dtype!r}; use one of {', '.join(PROB_DTYPES)}")

    @classmethod
    def of(cls, options: SegmentOptions | None = None, **changes) -> SegmentOptions:
        """``options`` (or the defaults) with ``changes``, validated again.

        Parameters
        ----------
        options : SegmentOptions, optional
        **changes
            Fields to replace (the CLI's and the dock's choices).

        Returns
        -------
        SegmentOptions
        """
        return replace(options or cls(), **changes)

    @property
    def resolved(self) -> bool:
        return None not in (self.tile_size, self.overlap, self.threshold, self.min_object_um2, self.edge_margin)

    def resolve(self, card) -> SegmentOptions:
        """These options with the card's values where none was chosen (the chosen class's
        threshold), checked against the card: the one place card defaults are read.

        Parameters
        ----------
        card : ModelCard

        Returns
        -------
        SegmentOptions
            Without ``None`` fields.

        Raises
        ------
        OptionError
            A class index the model does not have, an overlap not below the tile size, or a
            cells classifier (its cells come from nuclei, not from the engine's threshold).
        """
        if card.makes_cells:
            raise OptionError(f"{card.name}: a cells classifier makes one cell per nucleus; apply it with "
                              "'napari-ftu annotate IMAGE --cells --model FOLDER'")
        if not 0 <= self.class_index < len(card.classes):
            raise OptionError(f"class index {self.class_index} out of range: the model has "
                               f"{len(card.classes)} classes")
        tile = self.tile_size if self.tile_size is not None else card.tile_size
        overlap = self.overlap if self.overlap is not None else card.overlap
        if overlap >= tile:
            raise OptionError(f"overlap must be smaller than the tile size, got overlap {overlap} "
                               f"with tile size {tile}")
        threshold = self.threshold if self.threshold is not None else card.threshold_for(
            card.classes[self.class_index])
        min_um2 = self.min_object_um2 if self.min_object_um2 is not None else card.min_object_um2
        margin = self.edge_margin if self.edge_margin is not None else overlap
        if margin >= tile:
            raise OptionError(f"edge margin must be smaller than the tile size, got {margin} with tile size {tile}")
        return replace(self, tile_size=tile, overlap=overlap, threshold=threshold, min_object_um2=min_um2,
                       edge_margin=margin)

    def signature(self) -> dict:
        """The options that decide a result (batch size and prefetch change only speed)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("batch_size", "prefetch")}


@dataclass(frozen=True)
class OutputPlan:
    """Where a run's outputs go. ``store``: a zarr store on disk (else numpy arrays);
    ``full_resolution``: resampled to the image's own size (else the model grid);
    ``banded``: large enough that a batch splits it into row-band tasks.

    Parameters
    ----------
    image_shape, grid_shape : tuple
        ``(H, W)`` of the image (level 0) and of the model grid.
    store, full_resolution, banded : bool
        The decisions (see above).
    """

    image_shape: tuple
    grid_shape: tuple
    store: bool
    full_resolution: bool
    banded: bool


def plan_outputs(image_shape, grid_shape, *, pyramid_view: bool = False,
                 band_above: float = BAND_ABOVE_PIXELS) -> OutputPlan:
    """The size rules, in one place.

    Outputs stay in memory, resampled to the image's size (what RLE and label files index),
    while the image has at most :data:`MAX_FULL_RES_PIXELS` and the model grid at most
    :data:`STORE_ABOVE_PIXELS`; otherwise they stream into a zarr store on the model grid, so
    memory does not grow with the slide. ``pyramid_view`` (a viewer showing a stored pyramid,
    which draws model-grid outputs at their place lazily) always streams into a store. Slides of
    more than ``band_above`` pixels are ``banded``.

    Parameters
    ----------
    image_shape, grid_shape : tuple
        ``(H, W)`` of the image (level 0) and of the model grid.
    pyramid_view : bool
        A viewer shows the outputs over a stored pyramid.
    band_above : float
        Pixels above which a batch splits the slide into row bands.

    Returns
    -------
    OutputPlan
    """
    image_px = float(image_shape[0]) * float(image_shape[1])
    grid_px = float(grid_shape[0]) * float(grid_shape[1])
    store = pyramid_view or image_px > MAX_FULL_RES_PIXELS or grid_px > STORE_ABOVE_PIXELS
    return OutputPlan(tuple(image_shape), tuple(grid_shape), store=store, full_resolution=not store,
                      banded=image_px > band_above)
