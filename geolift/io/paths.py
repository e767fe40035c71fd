"""Paths: how a name a user types becomes what GDAL opens, which files belong together, where outputs may go.

One mapper for every entry point (``geolift fuse``, batch manifests, folder pairing), so a URL that works in one
works in all: ``s3://`` and friends become GDAL virtual file system paths, ``/vsi...`` paths pass untouched.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from geolift.errors import InputError, OutputError

__all__ = [
    "ENVI_DATA_SUFFIXES",
    "NEW_FILE_MODE",
    "band_token",
    "check_output_path",
    "companion_files",
    "gdal_path",
    "is_remote",
    "resolve_input",
]

PathLike = str | os.PathLike

#: URL schemes GDAL can read, and the virtual file system that reads each (``/vsicurl/`` keeps the whole URL).
URL_SCHEMES = {"s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/", "http": "/vsicurl/", "https": "/vsicurl/",
               "ftp": "/vsicurl/"}

#: What an ENVI data file may be called next to its ``x.hdr`` (``x``, ``x.bsq``, ...), most common first.
ENVI_DATA_SUFFIXES = ("", ".bsq", ".bil", ".bip", ".img", ".dat", ".raw", ".bin", ".envi")
_NOT_DATA_SUFFIXES = {".hdr", ".xml", ".properties", ".ovr", ".aux", ".sta", ".txt", ".json"}


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Permissions of a new file (0666 less the umask), as GDAL or ``open`` would give it. ``mkstemp`` makes files
#: private (0600); outputs renamed from one get these instead, so others (QGIS, a web server) can read them.
#: Read once at import: ``os.umask`` is process-wide, and probing it while writer threads create files races.
NEW_FILE_MODE = 0o666 & ~_read_umask()

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
_BAND_TOKEN = re.compile(r"(?:^|[_\-.])(B\d{1,2}A?)(?=$|[_\-.])", re.IGNORECASE)


def gdal_path(path: PathLike, base: PathLike | None = None) -> str:
    """``path`` as GDAL should open it: URLs as ``/vsi...`` paths, local paths absolute.

    ``s3://b/k`` -> ``/vsis3/b/k``, ``gs://`` -> ``/vsigs/``, ``az://`` -> ``/vsiaz/``, ``http(s)://`` and
    ``ftp://`` -> ``/vsicurl/<url>``, ``file:///x`` -> ``/x``; ``/vsi...`` paths are kept as they are. A relative
    local path is taken relative to ``base`` (a manifest's folder), else to the working folder. Remote paths stay
    strings (``Path`` would fold the ``//`` of ``https://``) and are never checked here: GDAL says what it cannot
    read. An unknown scheme raises ``InputError``.
    """
    text = os.fspath(path)
    if text.startswith("/vsi"):
        return text
    match = _SCHEME.match(text)
    if match:
        scheme, rest = match.group(1).lower(), match.group(2)
        if scheme == "file":
            text = rest if rest.startswith("/") else "/" + rest
        elif scheme in URL_SCHEMES:
            prefix = URL_SCHEMES[scheme]
            return prefix + (text if prefix == "/vsicurl/" else rest)
        else:
            raise InputError(f"Unsupported URL scheme {scheme!r} in {text!r}; use s3://, gs://, az://, "
                             "http(s)://, ftp:// or a GDAL /vsi... path.")
    local = Path(text).expanduser()
    if not local.is_absolute() and base is not None:
        local = Path(base) / local
    return os.path.abspath(local)


def is_remote(path: PathLike) -> bool:
    """True for GDAL virtual file system paths (``/vsicurl/``, ``/vsis3/``, ``/vsizip/``...), which only GDAL reads."""
    return os.fspath(path).startswith("/vsi")


def resolve_input(path: PathLike) -> str:
    """The file GDAL should open for an input ``path``: GDAL's name for a URL, an ENVI ``.hdr``'s data file.

    A missing local file or a folder raises ``InputError``.
    """
    name = gdal_path(path)
    if is_remote(name):
        return name
    p = Path(name)
    if not p.exists():
        raise InputError(f"Input file not found: {p}.")
    if p.is_dir():
        raise InputError(f"Input {p} is a folder; give a raster file or a list of band files.")
    if p.suffix.lower() != ".hdr":
        return name
    stem = p.with_suffix("")  # x.hdr -> x ; x.bsq.hdr -> x.bsq
    candidates = [stem.with_name(stem.name + s) for s in ENVI_DATA_SUFFIXES]
    candidates += [
        c for c in sorted(p.parent.glob(stem.name + ".*"))
        if c.suffix.lower() not in _NOT_DATA_SUFFIXES and c not in candidates
    ]
    for c in candidates:
        if c.is_file() and c != p:
            return str(c)
    raise InputError(f"ENVI header {p} has no matching data file next to it (e.g. {stem.name}.bsq).")


def companion_files(path: PathLike) -> list[Path]:
    """The files whose change changes what GDAL reads for ``path``: itself, its ENVI header or data, ``.aux.xml``.

    Only files that exist are listed, each once.
    """
    path = Path(path)
    names = [path, Path(str(path) + ".aux.xml"), Path(str(path) + ".hdr")]
    if path.suffix:
        names.append(path.with_suffix(".hdr"))
    if path.suffix.lower() == ".hdr":
        stem = path.with_suffix("")
        names += [stem.with_name(stem.name + s) for s in ENVI_DATA_SUFFIXES]
    found: list[Path] = []
    for p in names:
        if p not in found and p.is_file():
            found.append(p)
    return found


def band_token(path: PathLike) -> str | None:
    """The band token of an agency file name (``..._B02_10m.jp2`` -> ``"B02"``, ``..._SR_B4.TIF`` -> ``"B4"``).

    The last ``B<digits>[A]`` token between separators wins; ``None`` when there is none.
    """
    matches = _BAND_TOKEN.findall(Path(path).stem)
    return matches[-1].upper() if matches else None


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output_path(path: PathLike, *, overwrite: bool = False, inputs: Sequence[PathLike] = ()) -> Path:
    """Refuse, before any heavy work, an output that cannot or must not be written; return it absolute.

    Never an input (even with ``overwrite``); not an existing file unless ``overwrite``; its folder must
    exist and accept a new file (probed by creating and removing one, as permissions alone can lie).
    """
    out = Path(os.path.abspath(Path(path).expanduser()))
    # An ENVI header stands for its data file: x.hdr protects x.bsq, x.img, ... and x.bsq.hdr protects x.bsq.
    headers_of_out = (out.with_suffix(".hdr"), Path(str(out) + ".hdr"))
    for inp in inputs:
        inp_path = Path(inp).expanduser()
        related = [out]
        if inp_path.suffix.lower() == ".hdr":
            related += headers_of_out
        if any(_same_file(r, inp_path) for r in related):
            raise OutputError(f"Output {out} is one of the inputs; choose another output file.")
    if out.is_dir():
        raise OutputError(f"Output {out} is a folder; give a file name such as {out / 'fused.tif'}.")
    if out.exists() and not overwrite:
        raise OutputError(f"Output {out} already exists; use --overwrite (overwrite=True) to replace it.")
    folder = out.parent
    if not folder.exists():
        raise OutputError(f"Output folder {folder} does not exist.")
    if not folder.is_dir():
        raise OutputError(f"Output folder {folder} is not a folder.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".geolift-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"Output folder {folder} is not writable ({exc.strerror}).") from exc
    return out
