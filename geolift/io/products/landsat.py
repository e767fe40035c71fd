"""Landsat 8 and 9 Collection 2 products (USGS), the MSI side of a fusion: reflective bands in reflectance, QA_PIXEL.

What is read (USGS Landsat 8-9 Collection 2 Level-2 Science Product Guide, LSDS-1619, and Data Format Control Book,
LSDS-1328; the key names agree with delivered MTL files as open readers keep them). A product is named
``LC08_L2SP_<path><row>_<acquired>_<processed>_02_T1`` (``LC09``, ``L2SR``, ``L1TP``, ``L1GT``, ``L1GS``; ``T2``,
``RT``) and every file starts with that name:

* ``…_MTL.json`` (preferred) or ``…_MTL.xml``, root ``LANDSAT_METADATA_FILE``. The ODL ``…_MTL.txt`` is not parsed
  (given as the path, it stands for the JSON or XML beside it).

  - ``IMAGE_ATTRIBUTES``: ``SPACECRAFT_ID`` (``LANDSAT_8``, ``LANDSAT_9``: the SRF sets ``landsat8``,
    ``landsat9``), ``DATE_ACQUIRED`` and ``SCENE_CENTER_TIME`` (the acquisition time), ``SUN_ELEVATION``.
  - ``PRODUCT_CONTENTS``: ``PROCESSING_LEVEL``, ``FILE_NAME_BAND_<n>``, ``FILE_NAME_QUALITY_L1_PIXEL``.
  - Level 2 (``L2SP``, ``L2SR``): the surface-reflectance bands ``SR_B1`` … ``SR_B7``, scaled by
    ``LEVEL2_SURFACE_REFLECTANCE_PARAMETERS/REFLECTANCE_MULT_BAND_<n>`` and ``REFLECTANCE_ADD_BAND_<n>``
    (2.75e-05 and -0.2). A Level-2 MTL also carries its Level-1 source's ``LEVEL1_RADIOMETRIC_RESCALING`` with the
    same key names: it is never read for Level 2.
  - Level 1: bands 1-7 and 9, scaled by ``LEVEL1_RADIOMETRIC_RESCALING/REFLECTANCE_MULT_BAND_<n>`` and ``…ADD…``,
    which give top-of-atmosphere reflectance *without* the sun-angle correction; geolift divides both by
    sin(``SUN_ELEVATION``) (scene centre), as the Landsat 8 Data Users Handbook prescribes, so values read as
    top-of-atmosphere reflectance. The 15 m pan band 8 is left out (it would set the grid), so are thermal 10, 11.

* DN 0 is fill in every band (nodata).
* ``…_QA_PIXEL.TIF`` (16 bits): bit 0 fill, 1 dilated cloud, 2 cirrus (high confidence), 3 cloud, 4 cloud shadow,
  5 snow are masks, one per meaning; bit 6 (clear), 7 (water) and the confidence pairs in bits 8-15 are not.

Given as the product folder, its MTL file, a ZIP of the files, or the ``.tar`` bundle EarthExplorer delivers (read
in place through ``/vsizip/``, ``/vsitar/``; inside a ``.tar`` only the MTL.json is read).
"""

from __future__ import annotations

import json
import logging
import math
import re
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path, PurePosixPath

import numpy as np

from geolift.errors import InputError, MetadataError, SensorError, warn
from geolift.io.paths import PathLike
from geolift.io.products.common import finish, select_detectors
from geolift.io.products.folders import ProductFiles, local_path, metadata_root, zip_members
from geolift.io.read import MaskLayer, Scene, open_scene

__all__ = ["find", "open"]

log = logging.getLogger("geolift")

#: ``<product>_MTL.<json|xml|txt>``: the product name, its collection number, the format.
_MTL = re.compile(r"^(L[COTEM]\d{2}_L\d[A-Z]{2}_\d{6}_\d{8}_\d{8}_(\d{2})_[A-Z0-9]{2})_MTL\.(json|xml|txt)$",
                  re.IGNORECASE)
#: SPACECRAFT_ID -> (SRF library name, display name). Landsat 4-7 have other bands and QA bits.
SPACECRAFT = {"LANDSAT_8": ("landsat8", "Landsat 8"), "LANDSAT_9": ("landsat9", "Landsat 9")}
LEVEL2_BANDS = (1, 2, 3, 4, 5, 6, 7)  # SR_B1..SR_B7: Level 2 has no band 9
LEVEL1_BANDS = (1, 2, 3, 4, 5, 6, 7, 9)  # no pan 8 (15 m), no thermal 10, 11
#: QA_PIXEL masks: name -> bits (any set flags the pixel). Clear (bit 6) and water (bit 7) are not masks.
QA_MASKS = {"fill": 1 << 0, "dilated cloud": 1 << 1, "cirrus": 1 << 2, "cloud": 1 << 3, "cloud shadow": 1 << 4,
            "snow": 1 << 5}
ARCHIVES = {".zip": "/vsizip/", ".tar": "/vsitar/"}


def find(path: PathLike) -> ProductFiles | None:
    """The product at ``path`` (its folder, its MTL file, a ZIP or the ``.tar`` bundle), or None when it is none.

    A folder or archive holding several products is refused with an ``InputError`` naming them, rather than read
    as whichever comes first; each product's MTL file names one.
    """
    p = local_path(path)
    if p is None:
        return None
    if p.is_file() and p.suffix.lower() in ARCHIVES:
        names = zip_members(p) if p.suffix.lower() == ".zip" else _tar_members(p)
        return None if names is None else _in_archive(p, names)
    if p.is_file():
        match = _MTL.match(p.name)
        if match is None:
            return None
        siblings = sorted(c.name for c in p.parent.iterdir() if c.is_file())
        metadata = p.name if match.group(3).lower() != "txt" else _metadata_name(siblings, match.group(1))
        return _local(p.parent, match.group(1), metadata, siblings)
    if not p.is_dir():
        return None
    names = sorted(c.name for c in p.iterdir() if c.is_file())
    product = _one_product(names, p)
    return None if product is None else _local(p, product, _metadata_name(names, product), names)


def _local(folder: Path, product: str, metadata: str, names: list[str]) -> ProductFiles:
    files = {n.upper(): str((folder / n).resolve()) for n in names}
    return ProductFiles(product, str((folder / metadata).resolve()), files)


def _in_archive(archive: Path, members: list[str]) -> ProductFiles | None:
    product = _one_product(members, archive)
    if product is None:
        return None
    metadata = _metadata_name(members, product, tar=archive.suffix.lower() == ".tar")
    folder = PurePosixPath(metadata).parent
    prefix = f"{ARCHIVES[archive.suffix.lower()]}{archive.resolve()}"
    # GDAL names members without "./" (``tar cf x.tar ./…``); the archive's own name reads the metadata.
    files = {PurePosixPath(n).name.upper(): f"{prefix}/{PurePosixPath(n)}" for n in members
             if PurePosixPath(n).parent == folder}
    return ProductFiles(product, f"{prefix}/{PurePosixPath(metadata)}", files, str(archive.resolve()), metadata)


def _one_product(names: list[str], where: Path) -> str | None:
    """The product whose MTL files are among ``names`` (paths in an archive), or None; several are refused."""
    products = sorted({(str(PurePosixPath(n).parent), m.group(1)) for n in names
                       if (m := _MTL.match(PurePosixPath(n).name))})
    if len(products) > 1:
        listed = ", ".join(name for _, name in products[:3])
        more = f" and {len(products) - 3} more" if len(products) > 3 else ""
        raise InputError(f"{where} holds {len(products)} Landsat products ({listed}{more}); give one product's "
                         "MTL file or its own folder.")
    return products[0][1] if products else None


def _metadata_name(names: list[str], product: str, tar: bool = False) -> str:
    """The MTL to read: JSON before XML (inside a ``.tar`` JSON only); the ODL text when there is nothing else, so
    that opening says what is missing."""
    by_format = {m.group(3).lower(): n for n in names
                 if (m := _MTL.match(PurePosixPath(n).name)) and m.group(1).upper() == product.upper()}
    for fmt in ("json",) if tar else ("json", "xml"):
        if fmt in by_format:
            return by_format[fmt]
    return by_format.get("xml") or by_format["txt"]


def _tar_members(path: Path) -> list[str] | None:
    """The files inside the tar at ``path``, or None when it is no readable tar."""
    try:
        with tarfile.open(path) as archive:
            return [m.name for m in archive.getmembers() if m.isfile()]
    except (tarfile.TarError, OSError):
        return None


def _metadata_bytes(found: ProductFiles) -> bytes:
    try:
        if found.archive is None:
            return Path(found.metadata).read_bytes()
        if found.archive.lower().endswith(".zip"):
            with zipfile.ZipFile(found.archive) as archive:
                return archive.read(found.member)
        with tarfile.open(found.archive) as archive:
            member = archive.extractfile(found.member)
            if member is None:
                raise KeyError(found.member)
            return member.read()
    except (OSError, KeyError, zipfile.BadZipFile, tarfile.TarError) as exc:
        raise InputError(f"Cannot read {found.metadata} ({exc}).") from None


def _metadata(found: ProductFiles) -> dict[str, dict[str, str]]:
    """The MTL's groups as ``{group: {key: text}}``, from MTL.json or (hardened) MTL.xml alike."""
    suffix = PurePosixPath(found.metadata).suffix.lower()
    where = found.metadata
    if suffix == ".txt":
        raise InputError(f"The Landsat product {found.name} has only its MTL.txt here; geolift reads the MTL.json "
                         "or MTL.xml delivered with it.")
    if suffix == ".xml":
        if found.archive is not None and not found.archive.lower().endswith(".zip"):
            raise InputError(f"{found.archive} holds no MTL.json; unpack it, or give its MTL.xml.")
        root = metadata_root(found)
        if root.tag != "LANDSAT_METADATA_FILE":
            raise MetadataError(f"{where} is not a Landsat MTL file (root {root.tag}, not LANDSAT_METADATA_FILE).")
        return {group.tag: {item.tag: (item.text or "").strip() for item in group} for group in root}
    try:
        document = json.loads(_metadata_bytes(found))
    except UnicodeDecodeError:
        raise MetadataError(f"{where} is not UTF-8 text; the product may be damaged.") from None
    except json.JSONDecodeError as exc:
        raise MetadataError(f"{where} is not valid JSON ({exc.msg} at line {exc.lineno}); the product may be "
                            "truncated.") from None
    except RecursionError:
        raise MetadataError(f"{where} nests too deeply to be a Landsat MTL file.") from None
    groups = document.get("LANDSAT_METADATA_FILE") if isinstance(document, dict) else None
    if not isinstance(groups, dict):
        raise MetadataError(f"{where} has no LANDSAT_METADATA_FILE object; it is not a Landsat MTL file.")
    return {name: {k: str(v).strip() for k, v in group.items()} for name, group in groups.items()
            if isinstance(group, dict)}


def _group(meta: dict[str, dict[str, str]], name: str, where: str) -> dict[str, str]:
    group = meta.get(name)
    if not group:
        raise MetadataError(f"{where} has no {name} group; the MTL file is incomplete.")
    return group


def _number(group: dict[str, str], key: str, where: str) -> float:
    try:
        value = float(group[key])
    except KeyError:
        raise MetadataError(f"{where} lacks {key}.") from None
    except ValueError:
        raise MetadataError(f"{where}: {key} = {group[key]!r} is not a number.") from None
    if not math.isfinite(value):
        raise MetadataError(f"{where}: {key} = {group[key]!r} is not a finite number.")
    return value


def open(found: ProductFiles, check_data: bool = True, overlap: str = "keep") -> Scene:
    """The product as a :class:`Scene` of its reflective bands in reflectance (``B1`` …), QA_PIXEL masks, identity.

    ``overlap`` is accepted as for the two-detector products and checked; OLI's bands are one detector here.
    """
    match = _MTL.match(PurePosixPath(found.metadata).name)
    if match is not None and match.group(2) != "02":
        raise InputError(f"{found.name} is a Landsat Collection {int(match.group(2))} product; geolift reads "
                         "Collection 2 products (their QA_PIXEL bits differ from the older BQA band).")
    meta = _metadata(found)
    where = found.metadata
    contents, attributes = _group(meta, "PRODUCT_CONTENTS", where), _group(meta, "IMAGE_ATTRIBUTES", where)
    spacecraft = attributes.get("SPACECRAFT_ID", "").upper()
    if spacecraft not in SPACECRAFT:
        raise SensorError(f"{found.name} comes from {spacecraft or 'an unnamed spacecraft'}; geolift reads Landsat 8 "
                          "and 9 Collection 2 products (SRF sets landsat8, landsat9).")
    srf_sensor, display = SPACECRAFT[spacecraft]
    level = (contents.get("PROCESSING_LEVEL") or found.name.split("_")[1]).upper()
    if level.startswith("L2"):
        params, numbers = _group(meta, "LEVEL2_SURFACE_REFLECTANCE_PARAMETERS", where), LEVEL2_BANDS
        sun = 1.0  # surface reflectance already
    elif level.startswith("L1"):
        params, numbers = _group(meta, "LEVEL1_RADIOMETRIC_RESCALING", where), LEVEL1_BANDS
        elevation = _number(attributes, "SUN_ELEVATION", where)
        if not 0.0 < elevation <= 90.0:
            raise MetadataError(f"{where}: SUN_ELEVATION is {elevation:g} degrees, so the scene has no reflectance "
                                "(a night or polar-dark acquisition).")
        log.info("%s %s: top-of-atmosphere reflectance corrected for a sun elevation of %.2f degrees.", display,
                 found.name, elevation)
        sun = math.sin(math.radians(elevation))
    else:
        raise MetadataError(f"{where}: PROCESSING_LEVEL {level!r} is neither Level 1 nor Level 2.")
    listed = {n: contents[f"FILE_NAME_BAND_{n}"] for n in numbers if f"FILE_NAME_BAND_{n}" in contents}
    present = {n: found.files[name.upper()] for n, name in listed.items() if name.upper() in found.files}
    missing = [name for n, name in listed.items() if n not in present]
    if not present:
        raise InputError(f"The Landsat product {found.name} has none of its reflective band files beside its MTL "
                         f"file ({', '.join(missing) or 'the MTL file lists none'}).")
    if missing:
        warn(f"The Landsat product {found.name} lacks {', '.join(missing)} beside its MTL file; those "
             "bands are left out.")
    scales = np.array([_number(params, f"REFLECTANCE_MULT_BAND_{n}", where) for n in present]) / sun
    offsets = np.array([_number(params, f"REFLECTANCE_ADD_BAND_{n}", where) for n in present]) / sun
    bands = open_scene(list(present.values()), nodata=0, check_data=False)
    tags = dict(bands.tags) | {
        "product_name": found.name, "sensor": display, "processing_level": level,
        "acquisition_time": _acquisition_time(attributes), "srf_sensor": srf_sensor, "sensor_family": "landsat",
    }
    scene = replace(bands, scales=scales, offsets=offsets, band_names=tuple(f"B{n}" for n in present),
                    named_bands=(True,) * len(present), masks=_masks(found, contents), tags=tags)
    scene = select_detectors(scene, ["VNIR"] * scene.count, overlap)  # one detector: only checks the choice
    return finish(scene, label="Landsat", check_data=check_data)


def _acquisition_time(attributes: dict[str, str]) -> str:
    date, time = attributes.get("DATE_ACQUIRED", ""), attributes.get("SCENE_CENTER_TIME", "").strip('"')
    return f"{date}T{time}" if date and time else date


def _masks(found: ProductFiles, contents: dict[str, str]) -> tuple[MaskLayer, ...]:
    """QA_PIXEL's flags, one mask per meaning (none when the product lacks the file)."""
    name = contents.get("FILE_NAME_QUALITY_L1_PIXEL", "")
    path = found.files.get(name.upper()) if name else None
    if path is None:
        log.info("Landsat %s: no QA_PIXEL file beside its MTL file, so clouds are not masked.", found.name)
        return ()
    return tuple(MaskLayer(mask, path, bits=bits) for mask, bits in QA_MASKS.items())
