"""Pass 1's network output kept on disk, so that pass 2 does not predict every pixel again.

The default preset's consistency step needs the network's output twice: pass 1 degrades it onto the HSI grid for
the LR solve, pass 2 adds the correction to it and writes it. Predicting twice costs a full network pass (about a
quarter of the default preset's streaming time); keeping pass 1's output costs a temporary file as large as the
output in float32, written once and read once, mostly from the page cache.

The file holds pass 1's windows (``window`` x ``window`` px from the grid's origin, row by row), each as its strips
of ``strip_rows`` rows, each strip ``(bands, rows, cols)`` float32 as pass 1 computes it: every strip is one
contiguous write, and a pass-2 window aligned with pass 1's is one contiguous read per strip. Any other window is
assembled from the strips it overlaps. The values are pass 1's own, so pass 2's output is the same bits whether it
reads them here or predicts them again (the network is exact per pixel, :mod:`geolift.exact`).

The scratch is an optimisation and never a cause of failure: with too little free space it is not made, and a write
that fails (a full disk) drops it; pass 2 then predicts as it would without one.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

import numpy as np
from rasterio.windows import Window

__all__ = ["NetworkScratch", "scratch_bytes", "scratch_prefix"]

log = logging.getLogger(__name__)

_ITEM = np.dtype(np.float32).itemsize
#: Free space kept beside the scratch and the output: what else runs on the disk must not be starved.
FREE_SPACE_MARGIN = 1 << 30


def scratch_prefix(output: str | Path) -> str:
    """The name every scratch folder of ``output`` starts with: a later run that finds one knows whose it was."""
    return f".{Path(output).name}.geolift-scratch-"


def scratch_bytes(bands: int, height: int, width: int) -> int:
    """Size of the scratch file for a ``bands`` x ``height`` x ``width`` output."""
    return int(bands) * int(height) * int(width) * _ITEM


class NetworkScratch:
    """A temporary float32 store of pass 1's strips, addressed by their position on the output grid.

    Thread-safe: pass 1's workers :meth:`put` strips while others run, pass 2's worker :meth:`get` windows.
    """

    def __init__(self, path: Path, bands: int, height: int, width: int, window: int, strip_rows: int):
        self.path = Path(path)
        self.bands, self.height, self.width = int(bands), int(height), int(width)
        self.window, self.strip_rows = int(window), int(strip_rows)
        if self.window % self.strip_rows:
            raise ValueError(f"the window ({window} px) must be a whole number of strips ({strip_rows} rows)")
        self._lock = threading.Lock()
        self._written: set[tuple[int, int]] = set()  # (row, col) of each strip's first pixel
        self._file = open(self.path, "w+b", buffering=0)  # closed by close(), in the owner's context
        self.failed = False

    @classmethod
    def create(cls, folder: Path, bands: int, height: int, width: int, window: int, strip_rows: int,
               output_bytes: int = 0) -> NetworkScratch | None:
        """A scratch in ``folder``, or None (logged) when the disk there lacks room for it, ``output_bytes`` (the
        output's worst-case size) and :data:`FREE_SPACE_MARGIN`."""
        need = scratch_bytes(bands, height, width)
        try:
            free = shutil.disk_usage(folder).free
        except OSError as exc:
            log.info("No scratch for pass 1's output (%s): the network runs again in pass 2.", exc)
            return None
        if free < need + int(output_bytes) + FREE_SPACE_MARGIN:
            log.info("Pass 1's output would need %.1f GB of scratch in %s, where %.1f GB are free beside the output: "
                     "the network runs again in pass 2 instead.", need / 1e9, folder, free / 1e9)
            return None
        return cls(Path(folder) / "network_output.f32", bands, height, width, window, strip_rows)

    @property
    def nbytes(self) -> int:
        return scratch_bytes(self.bands, self.height, self.width)

    # -------------------------------------------------------------------------------------------- layout
    def _window_shape(self, row_off: int, col_off: int) -> tuple[int, int]:
        return min(self.window, self.height - row_off), min(self.window, self.width - col_off)

    def _strip(self, row: int, col_off: int) -> tuple[int, tuple[int, int, int]]:
        """Byte offset and shape of the strip starting at output row ``row`` in the pass-1 window at column
        ``col_off``: window rows before it cover the full width, windows before it in its row their own columns,
        strips before it in its window the window's columns."""
        window_row = row - row % self.window
        window_rows, window_cols = self._window_shape(window_row, col_off)
        pixels = window_row * self.width + col_off * window_rows + (row - window_row) * window_cols
        return pixels * self.bands * _ITEM, (self.bands, min(self.strip_rows, window_row + window_rows - row),
                                             window_cols)

    # -------------------------------------------------------------------------------------------- access
    def put(self, strip: np.ndarray, row_off: int, col_off: int) -> None:
        """Keep one of pass 1's strips: ``(bands, rows, cols)`` at (row_off, col_off), on the strip layout."""
        if self.failed:
            return
        row_off, col_off = int(row_off), int(col_off)
        offset, shape = self._strip(row_off, col_off)
        if (row_off % self.window) % self.strip_rows or col_off % self.window or strip.shape != shape:
            raise ValueError(f"a {strip.shape} strip at ({row_off}, {col_off}) is not one of pass 1's strips")
        data = memoryview(np.ascontiguousarray(strip, dtype=np.float32)).cast("B")
        try:
            self._write_at(data, offset)
        except OSError as exc:
            with self._lock:
                self._fail(f"writing pass 1's output to {self.path} failed ({exc})")
            return
        with self._lock:
            if not self.failed:
                self._written.add((row_off, col_off))

    def get(self, window: Window) -> np.ndarray | None:
        """The ``(bands, rows, cols)`` float32 block of ``window`` (a new array), or None when a strip it needs was
        never kept or cannot be read: the caller then predicts it."""
        r0, c0 = int(window.row_off), int(window.col_off)
        r1, c1 = r0 + int(window.height), c0 + int(window.width)
        out = np.empty((self.bands, r1 - r0, c1 - c0), dtype=np.float32)
        strips = [(row, col_off) for col_off in range(c0 - c0 % self.window, c1, self.window)
                  for row in range(r0 - r0 % self.strip_rows, r1, self.strip_rows)]  # strips tile every window
        with self._lock:
            if self.failed or not all(strip in self._written for strip in strips):
                return None
        for row, col_off in strips:
            offset, shape = self._strip(row, col_off)
            rows = slice(max(r0, row), min(r1, row + shape[1]))
            cols = slice(max(c0, col_off), min(c1, col_off + shape[2]))
            target = out[:, rows.start - r0:rows.stop - r0, cols.start - c0:cols.stop - c0]
            if not self._read_strip(target, offset, shape, rows.start - row, cols.start - col_off):
                return None
        return out

    def _read_strip(self, target: np.ndarray, offset: int, shape: tuple[int, int, int], row: int, col: int) -> bool:
        """Read the part of the strip at ``offset`` (``shape``) that starts at (``row``, ``col``) into ``target``:
        straight in, one piece per band, when it is whole strip rows across the full width (a window aligned
        with pass 1's); through a strip buffer otherwise. False (and the scratch dropped) when it cannot be read."""
        direct = hasattr(os, "preadv") and target.shape[2] == shape[2] and target[0].flags.c_contiguous
        if direct:
            band_bytes, first = shape[1] * shape[2] * _ITEM, offset + row * shape[2] * _ITEM
            pieces = [(memoryview(band).cast("B"), first + b * band_bytes) for b, band in enumerate(target)]
        else:
            buffer = np.empty(shape, dtype=np.float32)
            pieces = [(memoryview(buffer).cast("B"), offset)]
        try:
            problem = None if all(self._read_at(piece, at) == piece.nbytes for piece, at in pieces) \
                else "is shorter than pass 1 wrote it"
        except OSError as exc:
            problem = f"could not be read ({exc})"
        if problem:
            with self._lock:
                self._fail(f"pass 1's output in {self.path} {problem}")
            return False
        if not direct:
            target[...] = buffer[:, row:row + target.shape[1], col:col + target.shape[2]]
        return True

    def _write_at(self, data: memoryview, offset: int) -> None:
        """Positioned write: without a lock where the OS has ``pwrite`` (pass 1's workers write at once)."""
        if not hasattr(os, "pwrite"):  # Windows
            with self._lock:
                self._file.seek(offset)
                self._file.write(data)
            return
        while len(data):
            done = os.pwrite(self._file.fileno(), data, offset)
            data, offset = data[done:], offset + done

    def _read_at(self, into: memoryview, offset: int) -> int:
        """Positioned read into ``into``; the bytes read (fewer only at the end of the file). Without a lock
        where the OS has ``preadv`` (pass 2's workers read at once); the fallback's seek takes the lock."""
        if not hasattr(os, "preadv"):  # Windows
            with self._lock:
                self._file.seek(offset)
                return self._file.readinto(into) or 0
        total = 0
        while total < len(into):
            done = os.preadv(self._file.fileno(), [into[total:]], offset + total)
            if done == 0:
                break
            total += done
        return total

    def _fail(self, why: str) -> None:
        """Drop the scratch (its space too): pass 2 predicts instead."""
        log.warning("%s: pass 2 predicts the network's output again instead.", why)
        self.failed = True
        self._written.clear()
        try:
            self._file.truncate(0)
        except OSError:
            pass

    def close(self) -> None:
        """Close the file and delete it (a regular file only: never a device given as the path)."""
        with self._lock:
            self._written.clear()
            self.failed = True  # nothing more is kept or read
            self._file.close()
            if self.path.is_file():
                self.path.unlink(missing_ok=True)

    def __getstate__(self):
        raise TypeError("a NetworkScratch is one process's temporary file; it does not travel")
