"""GDAL's virtual file systems (``/vsis3/``, ``/vsigs/``, ``/vsiaz/``, ...) for files that are not rasters.

rasterio reads and writes rasters on object storage, but has no call for the rest a batch needs there: does an
object exist, read a small JSON sidecar, upload a finished local file, delete an object. These are thin ``ctypes``
wrappers over GDAL's VSI API, in the very GDAL library rasterio loaded (found as :mod:`geolift.io.gdal_options`
finds it), so they share its configuration, caches and credentials.

Credentials and endpoints come from GDAL's usual configuration: environment variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_PROFILE`` and ``~/.aws``,
``AWS_S3_ENDPOINT``/``AWS_HTTPS``/``AWS_VIRTUAL_HOSTING`` for S3-compatible stores; ``GOOGLE_APPLICATION_CREDENTIALS``
for ``/vsigs/``; ``AZURE_STORAGE_CONNECTION_STRING`` or ``AZURE_STORAGE_ACCOUNT``/``_ACCESS_KEY`` for
``/vsiaz/``), or config options set with ``CPLSetConfigOption``. See GDAL's "GDAL Virtual File Systems" page.

Every failure is a one-sentence :class:`~geolift.errors.InputError` (reading) or
:class:`~geolift.errors.OutputError` (writing) carrying GDAL's own message; GDAL's error printing is silenced
during these calls so nothing reaches the console twice.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager

from geolift.errors import InputError, OutputError

__all__ = ["CHUNK_BYTES", "WRITABLE_PREFIXES", "exists", "forget", "is_vsi_path", "is_writable_vsi_path", "read_bytes",
           "size", "unlink", "upload", "write_bytes"]

#: Virtual file systems GDAL can write sequentially (objects appear whole when the upload completes).
WRITABLE_PREFIXES = ("/vsis3/", "/vsigs/", "/vsiaz/", "/vsiadls/", "/vsioss/", "/vsiswift/", "/vsimem/")
#: Network file systems whose answers GDAL caches per process (cleared before a check, so it sees fresh state).
_CACHED_PREFIXES = ("/vsis3/", "/vsigs/", "/vsiaz/", "/vsiadls/", "/vsioss/", "/vsiswift/", "/vsicurl/",
                    "/vsiwebhdfs/", "/vsihdfs/")
#: Bytes read from the local file per ``VSIFWriteL`` (GDAL itself buffers parts of ``VSIS3_CHUNK_SIZE``, 50 MB).
CHUNK_BYTES = 8 * 1024 * 1024
#: A sidecar is a few kB; anything this big is not one.
_MAX_SMALL_FILE = 64 * 1024 * 1024

_VSI_STAT_EXISTS_FLAG = 0x1
_STAT_BUFFER = 512  # larger than any platform's VSIStatBufL (struct stat64); only the return code is used


def is_vsi_path(path: str | os.PathLike) -> bool:
    """True for a GDAL virtual file system path (``/vsis3/bucket/key``, ``/vsicurl/https://...``)."""
    return os.fspath(path).startswith("/vsi")


def is_writable_vsi_path(path: str | os.PathLike) -> bool:
    """True for a virtual file system path GDAL can write to (object storage, ``/vsimem/``; not ``/vsicurl/``)."""
    return os.fspath(path).startswith(WRITABLE_PREFIXES)


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    """rasterio's libgdal with the VSI and error functions typed (a CDLL object of our own: types are per object)."""
    from geolift.io.gdal_options import _gdal_library

    found = _gdal_library()
    if found is None:
        raise OutputError("GDAL's virtual file system functions are not available (libgdal was not found beside "
                          "rasterio).")
    lib = ctypes.CDLL(found._name)
    c_char_p, c_void_p, c_int, c_size_t = ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t
    signatures = {
        "VSIFOpenL": (c_void_p, [c_char_p, c_char_p]),
        "VSIFCloseL": (c_int, [c_void_p]),
        "VSIFReadL": (c_size_t, [c_void_p, c_size_t, c_size_t, c_void_p]),
        "VSIFWriteL": (c_size_t, [c_void_p, c_size_t, c_size_t, c_void_p]),
        "VSIFSeekL": (c_int, [c_void_p, ctypes.c_uint64, c_int]),
        "VSIFTellL": (ctypes.c_uint64, [c_void_p]),
        "VSIStatExL": (c_int, [c_char_p, c_void_p, c_int]),
        "VSIUnlink": (c_int, [c_char_p]),
        "VSICurlPartialClearCache": (None, [c_char_p]),
        "CPLErrorReset": (None, []),
        "CPLGetLastErrorMsg": (c_char_p, []),
        "CPLPushErrorHandler": (None, [c_void_p]),
        "CPLPopErrorHandler": (None, []),
        "CPLGetConfigOption": (c_char_p, [c_char_p, c_char_p]),
        "CPLGetThreadLocalConfigOption": (c_char_p, [c_char_p, c_char_p]),
        "CPLSetThreadLocalConfigOption": (None, [c_char_p, c_char_p]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


_NO_LISTING = b"GDAL_DISABLE_READDIR_ON_OPEN"


@contextmanager
def _gdal(lib: ctypes.CDLL) -> Iterator[callable]:
    """Silence GDAL's error printing on this thread (its handler stack is per thread) and yield a function that
    returns GDAL's last error message ("" when none).

    Unless the user configured it, ``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR`` is set for the thread meanwhile:
    otherwise opening one object lists its whole "folder" first, a request per 1000 objects, for every sidecar
    read of a resume check."""
    lib.CPLPushErrorHandler(ctypes.cast(lib.CPLQuietErrorHandler, ctypes.c_void_p))
    lib.CPLErrorReset()
    listing = lib.CPLGetConfigOption(_NO_LISTING, None) is None
    if listing:
        lib.CPLSetThreadLocalConfigOption(_NO_LISTING, b"EMPTY_DIR")

    def last_error() -> str:
        raw = lib.CPLGetLastErrorMsg()
        return raw.decode("utf-8", "replace").strip() if raw else ""

    try:
        yield last_error
    finally:
        if listing:
            lib.CPLSetThreadLocalConfigOption(_NO_LISTING, None)
        lib.CPLPopErrorHandler()


def _because(message: str) -> str:
    return f" ({message.rstrip('.')})" if message else ""


def _fresh(lib: ctypes.CDLL, path: str) -> None:
    """Forget what GDAL cached about ``path`` (existence, size), so a check sees the store as it is now."""
    if path.startswith(_CACHED_PREFIXES):
        lib.VSICurlPartialClearCache(path.encode())


def forget(path: str | os.PathLike) -> None:
    """Drop what GDAL cached about ``path`` in this process (its size, its first bytes): call before reading an
    object another process may have replaced."""
    _fresh(_lib(), os.fspath(path))


def exists(path: str | os.PathLike) -> bool:
    """Whether ``path`` exists (asked of the store, not GDAL's cache). Network failures read as "no"."""
    lib, path = _lib(), os.fspath(path)
    _fresh(lib, path)
    buffer = ctypes.create_string_buffer(_STAT_BUFFER)
    with _gdal(lib):
        return lib.VSIStatExL(path.encode(), buffer, _VSI_STAT_EXISTS_FLAG) == 0


def size(path: str | os.PathLike) -> int | None:
    """The size of the file at ``path`` in bytes, or None when it does not exist or cannot be opened."""
    lib, path = _lib(), os.fspath(path)
    if not exists(path):  # a handle may be handed out for a missing object (see read_bytes)
        return None
    with _gdal(lib):
        handle = lib.VSIFOpenL(path.encode(), b"rb")
        if not handle:
            return None
        try:
            if lib.VSIFSeekL(handle, 0, os.SEEK_END) != 0:
                return None
            return int(lib.VSIFTellL(handle))
        finally:
            lib.VSIFCloseL(handle)


def read_bytes(path: str | os.PathLike, limit: int = _MAX_SMALL_FILE) -> bytes:
    """The whole content of a small file at ``path``; ``InputError`` when it is missing, unreadable or larger
    than ``limit`` bytes."""
    lib, path = _lib(), os.fspath(path)
    _fresh(lib, path)
    buffer = ctypes.create_string_buffer(_STAT_BUFFER)
    with _gdal(lib) as last_error:
        # /vsis3/ and friends may hand out a handle for a missing object (reads then return nothing): ask first
        if lib.VSIStatExL(path.encode(), buffer, _VSI_STAT_EXISTS_FLAG) != 0:
            raise InputError(f"Cannot open {path}{_because(last_error() or 'not found')}.")
        handle = lib.VSIFOpenL(path.encode(), b"rb")
        if not handle:
            raise InputError(f"Cannot open {path}{_because(last_error() or 'not found')}.")
        try:
            parts, total = [], 0
            buffer = ctypes.create_string_buffer(1024 * 1024)
            while True:
                n = lib.VSIFReadL(buffer, 1, len(buffer), handle)
                if n:
                    parts.append(buffer.raw[:n])
                    total += n
                if total > limit:
                    raise InputError(f"{path} is larger than {limit} bytes; it is not a small file.")
                if n < len(buffer):
                    message = last_error()
                    if message:
                        raise InputError(f"Cannot read {path} ({message.rstrip('.')}).")
                    return b"".join(parts)
        finally:
            lib.VSIFCloseL(handle)


def _check_writable(path: str) -> None:
    if is_vsi_path(path) and not is_writable_vsi_path(path):
        raise OutputError(f"GDAL cannot write to {path}: {path.split('/')[1]} is read-only; write to object "
                          "storage through /vsis3/, /vsigs/ or /vsiaz/ (s3://, gs://, az://).")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` as the file ``path`` (on object storage: one PUT, visible only once complete);
    ``OutputError`` when it cannot be written."""
    lib, path = _lib(), os.fspath(path)
    _check_writable(path)
    with _gdal(lib) as last_error:
        handle = lib.VSIFOpenL(path.encode(), b"wb")
        if not handle:
            raise OutputError(f"Cannot write {path}{_because(last_error())}.")
        written = lib.VSIFWriteL(data, 1, len(data), handle) if data else 0
        closed = lib.VSIFCloseL(handle)  # on object storage the upload happens here
        if written != len(data) or closed != 0:
            raise OutputError(f"Cannot write {path}{_because(last_error() or 'the upload failed')}.")


def upload(local: str | os.PathLike, remote: str | os.PathLike, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Copy the local file ``local`` to ``remote`` (e.g. ``/vsis3/bucket/key``) by streaming it in chunks; the
    number of bytes. ``OutputError`` on failure.

    On object storage the object becomes visible only when the upload completes (GDAL sends one PUT, or
    completes a multipart upload, when the handle is closed), so readers never see part of it. A failed part
    upload makes GDAL abort the upload at close. When reading the local file fails midway, the handle is left
    unclosed on purpose: closing it would publish the truncated object.
    """
    lib, local, remote = _lib(), os.fspath(local), os.fspath(remote)
    _check_writable(remote)
    try:
        source = open(local, "rb")  # closed by the with below, whatever happens to the remote handle
    except OSError as exc:
        raise OutputError(f"Cannot read {local} to upload it ({exc.strerror or exc}).") from None
    with source, _gdal(lib) as last_error:
        handle = lib.VSIFOpenL(remote.encode(), b"wb")
        if not handle:
            raise OutputError(f"Cannot write {remote}{_because(last_error())}.")
        total = 0
        while True:
            try:
                data = source.read(chunk_bytes)
            except OSError as exc:  # handle left open: closing it would publish a truncated object
                raise OutputError(f"Cannot read {local} to upload it ({exc.strerror or exc}).") from None
            if not data:
                break
            if lib.VSIFWriteL(data, 1, len(data), handle) != len(data):
                lib.VSIFCloseL(handle)  # after a failed write GDAL aborts the upload instead of completing it
                raise OutputError(f"Cannot upload {local} to {remote}{_because(last_error())}.")
            total += len(data)
        if lib.VSIFCloseL(handle) != 0:
            raise OutputError(f"Cannot upload {local} to {remote}{_because(last_error() or 'the upload failed')}.")
    return total


def unlink(path: str | os.PathLike, missing_ok: bool = True) -> None:
    """Delete the file ``path``; ``OutputError`` when it exists and cannot be deleted (or is missing and
    ``missing_ok`` is false)."""
    lib, path = _lib(), os.fspath(path)
    with _gdal(lib) as last_error:
        if lib.VSIUnlink(path.encode()) == 0:
            _fresh(lib, path)
            return
        message = last_error()
    if missing_ok and not exists(path):
        return
    raise OutputError(f"Cannot delete {path}{_because(message)}.")
