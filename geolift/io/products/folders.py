"""Products delivered as a folder of files named after one METADATA XML (EnMAP, DESIS): finding and reading them.

A user may give the folder, its metadata file, or the delivered ZIP (read in place through GDAL's ``/vsizip/``).
A folder or ZIP holding several products is refused rather than read as whichever comes first. The metadata is
parsed only when it declares no DTD or entity: a downloaded file must not make the parser expand anything.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ElementTree
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from geolift.errors import InputError, MetadataError
from geolift.io.paths import PathLike

__all__ = ["ProductFiles", "find_product_files", "local_path", "metadata_root", "zip_members"]

#: Raster files a product may deliver its layers in (GeoTIFF, or ENVI with a header).
IMAGE_SUFFIXES = (".TIF", ".TIFF", ".BSQ", ".BIL", ".BIP")


@dataclass(frozen=True)
class ProductFiles:
    """Where a product's files are: GDAL paths by file name, and how to read the metadata's bytes."""

    name: str  # the product name (the file names' common prefix)
    metadata: str  # the metadata file's GDAL path
    files: dict[str, str]  # upper-case file name -> GDAL path
    archive: str | None = None  # the ZIP, when the product is one
    member: str | None = None  # the metadata file inside it

    def file(self, suffix: str) -> str | None:
        """The GDAL path of the layer ``<name>-<suffix>`` (any raster suffix), or None when it is absent."""
        for ext in IMAGE_SUFFIXES:
            path = self.files.get(f"{self.name}-{suffix}{ext}".upper())
            if path is not None:
                return path
        return None


def local_path(path: PathLike) -> Path | None:
    """``path`` as a local path, or None for a GDAL virtual path or a URL (products are recognised on disk)."""
    text = os.fspath(path)
    if text.startswith("/vsi") or "://" in text:
        return None
    return Path(text).expanduser()


def zip_members(path: Path) -> list[str] | None:
    """The files inside the ZIP at ``path``, or None when ``path`` is no readable ZIP."""
    if not (path.is_file() and path.suffix.lower() == ".zip"):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            return [n for n in archive.namelist() if not n.endswith("/")]
    except (zipfile.BadZipFile, OSError):
        return None


def find_product_files(path: PathLike, metadata_name: re.Pattern[str], sensor: str) -> ProductFiles | None:
    """The product at ``path`` whose metadata file's name matches ``metadata_name``, or None when it is not one."""
    p = local_path(path)
    if p is None:
        return None
    if p.is_file() and p.suffix.lower() == ".zip":
        return _in_zip(p, metadata_name, sensor)
    if p.is_file() and metadata_name.search(p.name):
        files = {c.name.upper(): str(c.resolve()) for c in p.parent.iterdir() if c.is_file()}
        return ProductFiles(_product_name(p.name), str(p.resolve()), files)
    if not p.is_dir():
        return None
    metadata = sorted(c for c in p.iterdir() if c.is_file() and metadata_name.search(c.name))
    if not metadata:
        return None
    _refuse_several(p, [m.name for m in metadata], sensor)
    files = {c.name.upper(): str(c.resolve()) for c in p.iterdir() if c.is_file()}
    return ProductFiles(_product_name(metadata[0].name), str(metadata[0].resolve()), files)


def _in_zip(archive_path: Path, metadata_name: re.Pattern[str], sensor: str) -> ProductFiles | None:
    names = zip_members(archive_path)
    if names is None:
        return None
    members = sorted(n for n in names if metadata_name.search(PurePosixPath(n).name))
    if not members:
        return None
    _refuse_several(archive_path, members, sensor)
    folder = PurePosixPath(members[0]).parent
    prefix = f"/vsizip/{os.path.abspath(archive_path)}"
    files = {PurePosixPath(n).name.upper(): f"{prefix}/{n}" for n in names if PurePosixPath(n).parent == folder}
    return ProductFiles(_product_name(members[0]), f"{prefix}/{members[0]}", files, os.path.abspath(archive_path),
                        members[0])


def _refuse_several(where: Path, metadata_names: list[str], sensor: str) -> None:
    if len(metadata_names) > 1:
        names = ", ".join(PurePosixPath(n).name for n in metadata_names[:3])
        more = f" and {len(metadata_names) - 3} more" if len(metadata_names) > 3 else ""
        raise InputError(f"{where} holds {len(metadata_names)} {sensor} products ({names}{more}); give one product's "
                         "metadata file or its own folder.")


def _product_name(metadata_name: str) -> str:
    return re.sub(r"-METADATA\.XML$", "", PurePosixPath(metadata_name).name, flags=re.IGNORECASE)


def metadata_root(found: ProductFiles) -> ElementTree.Element:
    """The parsed metadata file; a DTD or entity declaration, or broken XML, is a one-line ``MetadataError``."""
    try:
        if found.archive is not None:
            with zipfile.ZipFile(found.archive) as archive:
                data = archive.read(found.member)
        else:
            data = Path(found.metadata).read_bytes()
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise InputError(f"Cannot read {found.metadata} ({exc}).") from None
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise MetadataError(f"{found.metadata} declares a DTD or entities; geolift does not expand them in a "
                            "downloaded file.")
    try:
        return ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise MetadataError(f"{found.metadata} is not valid XML ({exc}); the product may be truncated.") from None
