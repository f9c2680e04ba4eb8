"""A pyramidal label store (zarr) for slides too big to hold or paint in memory.

napari cannot paint multiscale labels, so a large slide is corrected one full-resolution
window at a time: :meth:`LabelStore.read_window` gives an ordinary array to edit,
:meth:`LabelStore.write_window` puts it back and rebuilds only the matching part of each lower
level (nearest neighbour: level ``k`` pixel ``(i, j)`` is level 0 pixel ``(i·2^k, j·2^k)``, so
label ids never blend). Empty chunks are not stored, and zarr's local store replaces each chunk
file atomically, so a 20 000 × 20 000 store of a few objects is a few files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_ftu.boxes import Box, corners, from_corners, size
from napari_ftu.errors import EditError, InputError, OptionError

MIN_LEVEL = 256  # the pyramid stops when a level's longer side would drop below this


class LabelStore:
    """Levels ``"0"``, ``"1"``, … of a zarr group; level ``k`` is level 0 strided by ``2**k``.

    Parameters
    ----------
    group : zarr.Group
        Open it with :meth:`open` or make one with :meth:`create`.

    Raises
    ------
    InputError
        A group without level 0.
    """

    def __init__(self, group):
        self.group = group
        keys = sorted((k for k in group.array_keys() if k.isdigit()), key=int)
        if not keys or keys[0] != "0":
            raise InputError(f"{group.store}: not a label store (no level 0)")
        self.levels = [group[k] for k in keys]

    @classmethod
    def create(cls, path: str | Path, shape, chunks: int = 1024, dtype="uint32", overwrite: bool = False) -> LabelStore:
        """A new, empty store with every level down to :data:`MIN_LEVEL` pixels.

        Parameters
        ----------
        path : str or Path
            The zarr folder.
        shape : tuple of int
            Level 0 ``(height, width)``.
        chunks : int
            Chunk side; empty chunks cost nothing.
        dtype : str
            An integer type.
        overwrite : bool
            Replace an existing store.

        Returns
        -------
        LabelStore

        Raises
        ------
        OptionError, InputError
            A bad size or type, or ``path`` exists without ``overwrite``.
        """
        import zarr

        h, w = (int(v) for v in shape)
        if h < 1 or w < 1:
            raise OptionError(f"a label store needs a positive size, got {shape}")
        if np.dtype(dtype).kind not in "iu":
            raise OptionError(f"labels must be integers, got {dtype}")
        path = Path(path)
        if path.exists() and not overwrite:
            raise InputError(f"{path} already exists")
        group = zarr.open_group(str(path), mode="w" if overwrite else "w-")
        group.attrs["napari_ftu"] = {"kind": "label pyramid", "downsample": 2}
        k = 0
        while True:
            lh, lw = -(-h // 2**k), -(-w // 2**k)
            group.create_array(str(k), shape=(lh, lw), chunks=(min(chunks, lh), min(chunks, lw)), dtype=dtype,
                               fill_value=0, config={"write_empty_chunks": False})
            if max(lh, lw) <= MIN_LEVEL:
                break
            k += 1
        return cls(group)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r+") -> LabelStore:
        """An existing store.

        Parameters
        ----------
        path : str or Path
        mode : str
            zarr's mode: ``"r+"`` to edit, ``"r"`` to view.

        Returns
        -------
        LabelStore

        Raises
        ------
        InputError
            No such folder, or not a label store.
        """
        import zarr

        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: no such label store")
        try:
            group = zarr.open_group(str(path), mode=mode)
        except Exception as exc:  # zarr raises several types for a folder that is not a group
            raise InputError(f"{path}: not a zarr label store ({exc})") from exc
        return cls(group)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.levels[0].shape)

    def _check_window(self, box: Box):
        H, W = self.shape
        y0, x0, y1, x1 = corners(box)
        if y1 <= y0 or x1 <= x0 or y0 < 0 or x0 < 0 or y1 > H or x1 > W:
            raise EditError(f"window {y1 - y0} × {x1 - x0} at ({y0}, {x0}) does not fit in the {H} × {W} label store")

    def read_window(self, box: Box) -> np.ndarray:
        """Full-resolution labels of the window ``box`` (an ordinary array to edit).

        Parameters
        ----------
        box : Box
            The window in level-0 pixels; it must lie inside the store.

        Returns
        -------
        ndarray
            A copy: editing it changes nothing until :meth:`write_window`.

        Raises
        ------
        EditError
            The window is empty or reaches outside the store.
        """
        self._check_window(box)
        return np.asarray(self.levels[0][box])

    def write_window(self, box: Box, window: np.ndarray) -> list[Box]:
        """Write an edited window back and update the lower levels over its area only.

        Parameters
        ----------
        box : Box
            Where the window goes, in level-0 pixels (as given to :meth:`read_window`).
        window : ndarray
            2-D labels of the box's size.

        Returns
        -------
        list of Box
            Per level, the region rewritten (empty where a level gained no pixel).

        Raises
        ------
        EditError
            The window is not 2-D, not the box's size, or the box reaches outside the store.
        """
        window = np.asarray(window)
        if window.ndim != 2:
            raise EditError(f"a label window must be 2-D, got shape {window.shape}")
        if window.shape != size(box):
            raise EditError(f"a {window.shape[0]} × {window.shape[1]} window does not fill a "
                            f"{size(box)[0]} × {size(box)[1]} box")
        self._check_window(box)
        self.levels[0][box] = window.astype(self.levels[0].dtype, copy=False)
        regions = [box]
        y0, x0, y1, x1 = corners(box)
        for k in range(1, len(self.levels)):
            # Level k pixel i comes from level k-1 pixel 2i: cover every i whose source moved.
            y0, x0 = -(-y0 // 2), -(-x0 // 2)
            y1, x1 = min(-(-y1 // 2), self.levels[k].shape[0]), min(-(-x1 // 2), self.levels[k].shape[1])
            if y0 >= y1 or x0 >= x1:
                regions.append(from_corners(y0, x0, y0, x0))
                continue
            src = np.asarray(self.levels[k - 1][2 * y0 : 2 * y1 - 1, 2 * x0 : 2 * x1 - 1])
            self.levels[k][y0:y1, x0:x1] = src[::2, ::2]
            regions.append(from_corners(y0, x0, y1, x1))
        return regions

    def n_stored_chunks(self, level: int = 0) -> int:
        """Chunks actually written at ``level`` (empty chunks are not stored).

        Parameters
        ----------
        level : int

        Returns
        -------
        int
        """
        return int(self.levels[level].nchunks_initialized)
