"""One exception hierarchy for geolift.

Every error a user can cause (bad file, bad band name, no overlap, ...) is a
``GeoliftError`` subclass with a one-sentence message; the CLI prints that
sentence and exits with the class's ``exit_code``, never a traceback:

1 any other geolift error, 2 bad input or sensor/band, 3 the scenes cannot be
aligned, 4 the model cannot be fitted or used, 5 the output cannot be written,
6 a batch cannot run, 7 a batch ran but some jobs failed, 8 an inconsistent pair
refused by ``--strict``. The CLI adds 130
(interrupted) and 137 (out of memory); click's usage errors exit 2.

Warnings (:class:`GeoliftWarning`, issued with :func:`warn`) go through Python's warnings
module, so a library user can filter them; :func:`log_warnings` turns them into records of
the ``geolift`` logger, which the CLI prints as one line ``geolift: warning: <sentence>``.
Batch tasks use :func:`warnings_to_log` instead: Python's warning filters are shared by
every thread of a process, a thread-local switch is not.
"""

import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


class GeoliftError(Exception):
    """Base class of every error geolift raises on purpose."""

    exit_code = 1


class InputError(GeoliftError):
    """An input file is missing, unreadable, or not a usable raster."""

    exit_code = 2


class MetadataError(InputError):
    """A raster lacks metadata geolift needs (CRS, transform, wavelengths)."""


class SensorError(GeoliftError):
    """Unknown sensor or band name, or a bad custom SRF file."""

    exit_code = 2


class SpectralCoverageError(SensorError):
    """A multispectral band lies (partly) outside the hyperspectral range."""


class AlignmentError(GeoliftError):
    """The two scenes cannot be brought onto a common grid (e.g. no overlap)."""

    exit_code = 3


class ModelError(GeoliftError):
    """The model cannot be fitted or used (no valid pixels, not fitted, shape mismatch)."""

    exit_code = 4


class OutputError(GeoliftError):
    """The output cannot be written (exists, unwritable folder, disk full)."""

    exit_code = 5


class BatchError(GeoliftError):
    """A batch manifest is malformed or a batch could not run."""

    exit_code = 6


class InconsistentPairError(GeoliftError):
    """The two scenes do not agree (band order, units, clouds...; see geolift.checks) and strict mode refuses them."""

    exit_code = 8


class JobsFailedError(BatchError):
    """A batch ran, but some of its jobs failed (the others are finished and kept)."""

    exit_code = 7


class GeoliftWarning(UserWarning):
    """Something was changed or dropped on the user's behalf (e.g. an uncovered band)."""


_THIS_THREAD = threading.local()


def warn(message: str, stacklevel: int = 2) -> None:
    """Issue a :class:`GeoliftWarning` (attributed ``stacklevel`` frames up, as ``warnings.warn``); on a thread
    inside :func:`warnings_to_log` it becomes a warning record of the ``geolift`` logger directly."""
    if getattr(_THIS_THREAD, "to_log", False):
        logging.getLogger("geolift").warning("%s", message)
    else:
        warnings.warn(message, GeoliftWarning, stacklevel=stacklevel + 1)


@contextmanager
def warnings_to_log() -> Iterator[None]:
    """Make :func:`warn` on this thread log, whatever the process-wide warning filters are at that moment.

    A batch worker runs other code on other threads (Dask, torch, the readers of earlier tasks); a filter or
    ``showwarning`` swapped by any of them, or a ``catch_warnings`` exiting out of order, must not lose a
    task's warning."""
    before = getattr(_THIS_THREAD, "to_log", False)
    _THIS_THREAD.to_log = True
    try:
        yield
    finally:
        _THIS_THREAD.to_log = before


def log_warnings() -> None:
    """Show every :class:`GeoliftWarning` as a warning record of the ``geolift`` logger (no source path) from now
    on; other warnings keep Python's own display. For command-line processes and batch worker tasks."""
    show = warnings.showwarning
    if getattr(show, "_geolift", False):
        return

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, GeoliftWarning):
            logging.getLogger("geolift").warning("%s", message)
        else:
            show(message, category, filename, lineno, file, line)

    showwarning._geolift = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning
    warnings.filterwarnings("always", category=GeoliftWarning)  # each one matters, not only the first per line
    # rasterio's NotGeoreferencedWarning for the in-memory rasters of its warps: noise to a user, since geolift
    # checks georeferencing itself and refuses a file without it. io hides it while it reads, but warnings.
    # catch_warnings is process-wide and not thread-safe, so with reads on several threads one could slip through.
    warnings.filterwarnings("ignore", message="Dataset has no geotransform")

