"""Pass 1's network output kept on disk for pass 2 (``geolift.scratch``): what is put is what is got, for any
window; a strip never written, a failed write or too little free space make the caller predict instead."""

from __future__ import annotations

import logging
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import geolift_log
from rasterio.windows import Window

from geolift.grid import block_windows
from geolift.scratch import NetworkScratch, scratch_bytes

BANDS, HEIGHT, WIDTH, WINDOW, STRIP = 5, 70, 90, 32, 8


def strips(height: int = HEIGHT, width: int = WIDTH):
    """(row_off, col_off, rows, cols) of every strip, as pass 1 cuts its windows."""
    for w in block_windows(width, height, WINDOW):
        for a in range(0, int(w.height), STRIP):
            yield int(w.row_off) + a, int(w.col_off), min(STRIP, int(w.height) - a), int(w.width)


@pytest.fixture()
def cube():
    return np.random.default_rng(0).normal(size=(BANDS, HEIGHT, WIDTH)).astype(np.float32)


@pytest.fixture()
def scratch(tmp_path):
    store = NetworkScratch(tmp_path / "scratch.f32", BANDS, HEIGHT, WIDTH, WINDOW, STRIP)
    yield store
    store.close()


def put_all(store: NetworkScratch, cube: np.ndarray, skip=()) -> None:
    """Put every strip from two threads, in an order unlike the layout's (as pass 1's workers may)."""
    todo = [s for s in strips() if s[:2] not in skip][::-1]

    def worker(part):
        for r, c, h, w in part:
            store.put(cube[:, r:r + h, c:c + w].copy(), r, c)

    threads = [threading.Thread(target=worker, args=(todo[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.mark.parametrize("window", [
    Window(0, 0, WIDTH, HEIGHT),  # everything
    Window(0, 0, WINDOW, WINDOW),  # one of pass 1's windows
    Window(WINDOW, 3, WINDOW, 12),  # one window's full width, rows off the strips (read straight in)
    Window(2 * WINDOW, 0, WIDTH - 2 * WINDOW, HEIGHT),  # the partial last column of windows, whole
    Window(5, 7, 40, 33),  # across four windows, rows and columns off the strips
    Window(89, 69, 1, 1),  # the last pixel, in a partial window's partial strip
    Window(30, 60, 60, 10),  # the bottom row of windows (6 rows high)
])
def test_what_is_put_is_what_is_got_for_any_window(scratch, cube, window):
    put_all(scratch, cube)
    got = scratch.get(window)
    r, c = int(window.row_off), int(window.col_off)
    assert got.dtype == np.float32 and got.flags.writeable
    np.testing.assert_array_equal(got, cube[:, r:r + int(window.height), c:c + int(window.width)])
    assert scratch.path.stat().st_size == scratch.nbytes == scratch_bytes(BANDS, HEIGHT, WIDTH)


def test_a_window_whose_strip_was_never_written_is_not_served(scratch, cube):
    put_all(scratch, cube, skip={(40, 32)})  # the strip at rows 40-47 of the window at column 32
    assert scratch.get(Window(40, 40, 8, 8)) is None
    assert scratch.get(Window(30, 47, 4, 1)) is None  # one pixel of it is enough
    np.testing.assert_array_equal(scratch.get(Window(0, 0, 32, 70)), cube[:, :, :32])


def test_a_block_that_is_not_one_of_pass_ones_strips_is_refused(scratch, cube):
    with pytest.raises(ValueError, match="not one of pass 1's strips"):
        scratch.put(cube[:, 4:12, :32], 4, 0)  # off the strip rows
    with pytest.raises(ValueError, match="not one of pass 1's strips"):
        scratch.put(cube[:, :8, :20], 0, 0)  # narrower than its window


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, a device whose writes fail (ENOSPC)")
def test_a_failed_write_drops_the_scratch_and_the_caller_predicts(cube):
    store = NetworkScratch(Path("/dev/full"), BANDS, HEIGHT, WIDTH, WINDOW, STRIP)
    with geolift_log() as records:
        store.put(cube[:, :8, :32].copy(), 0, 0)
    assert store.failed
    said = " ".join(r.getMessage() for r in records if r.levelno == logging.WARNING)
    assert "pass 2 predicts" in said and "/dev/full" in said and "No space left" in said
    assert store.get(Window(0, 0, 8, 8)) is None
    store.close()
    assert Path("/dev/full").exists()  # closing deletes regular files only


def test_no_scratch_where_the_disk_lacks_room_for_it_and_the_output(tmp_path):
    with geolift_log() as records:
        assert NetworkScratch.create(tmp_path, BANDS, HEIGHT, WIDTH, WINDOW, STRIP, output_bytes=1 << 62) is None
    assert any("runs again in pass 2" in r.getMessage() for r in records)
    assert list(tmp_path.iterdir()) == []
    store = NetworkScratch.create(tmp_path, BANDS, HEIGHT, WIDTH, WINDOW, STRIP, output_bytes=0)
    assert store is not None
    store.close()
    assert list(tmp_path.iterdir()) == []


def test_a_scratch_does_not_travel_to_another_process(scratch):
    with pytest.raises(TypeError, match="does not travel"):
        pickle.dumps(scratch)
