"""Sensor spectral response curves: the bundled library, the names users type, custom curves (CSV or Gaussian).

The bundled curves live in ``srf_library/`` (shipped as the package ``geolift.srf_library``, one CSV per sensor,
described by ``sensors.json``). Band names resolve loosely ('B02', 'b2', 'blue', 'B2_blue' all mean Sentinel-2's
B2) but never ambiguously.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Union

import numpy as np

from geolift.errors import MetadataError, SensorError
from geolift.units import guess_unit_factor, unit_factor

__all__ = [
    "SRFSet",
    "bands",
    "describe_sensor",
    "gaussian_srf",
    "load_sensor",
    "load_srf_csv",
    "parse_band_list",
    "resolve_band",
    "sensor_aliases",
    "sensor_info",
    "sensors",
    "to_nm",
]

log = logging.getLogger("geolift")

_LIBRARY_PACKAGE = "geolift.srf_library"
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz
_FOUR_LN2 = 4.0 * math.log(2.0)



# --------------------------------------------------------------------------- names


def parse_band_list(text: str | None) -> tuple[str, ...] | None:
    """Band names as users list them: ``"B2,B3,B4"``, ``"B2;B3"`` or ``"B2 B3 B4"``; None when there is none.

    Commas or semicolons separate names when the text has any (a custom SRF's column may hold a space),
    else white space does. The one parser for ``--bands`` and a manifest's ``bands`` column.
    """
    if not text or not text.strip():
        return None
    parts = re.split(r"[,;]", text) if re.search(r"[,;]", text) else text.split()
    names = tuple(part.strip() for part in parts if part.strip())
    return names or None


def _normalise_name(text: str) -> str:
    """Lower-case key used for matching sensor and band spellings.

    Spaces, '-', '_' and '.' are ignored; band numbers lose leading zeros and an
    optional 'b'/'band' prefix, so 'B02', 'b2', 'band 2' and '2' all become 'b2'.
    """
    key = re.sub(r"[\s_\-.]+", "", str(text).strip().lower())
    match = re.fullmatch(r"(?:band|b)?0*(\d+)([a-z]?)", key)
    if match:
        return f"b{match.group(1)}{match.group(2)}"
    return key


def _build_band_aliases(
    band_names: Sequence[str],
    column_names: Sequence[str] | None = None,
    extra: dict[str, Iterable[str]] | None = None,
) -> dict[str, str]:
    """Map normalised spellings to band names.

    Priority (a higher level is never overridden): the band name itself; the CSV column
    name (e.g. 'B2_blue'); registry extras (e.g. 'swir16'); the descriptive part of the
    column name after the first '_' ('blue') and, for columns the name was not derived
    from, the part before it.  A lower-priority spelling that would point at two
    different bands is ambiguous and left out.
    """
    column_names = list(column_names) if column_names is not None else list(band_names)
    levels: list[list[tuple[str, str]]] = [[], [], [], []]
    for band, column in zip(band_names, column_names):
        levels[0].append((band, band))
        levels[1].append((column, band))
        for alias in (extra or {}).get(band, ()):
            levels[2].append((alias, band))
        if "_" in column:
            prefix, suffix = column.split("_", 1)
            if not re.fullmatch(r"[\d_]+", suffix):
                levels[3].append((suffix, band))
            if prefix != band:
                levels[3].append((prefix, band))
        if _normalise_name(band) == "pan" or column.lower().endswith("_pan"):
            levels[2].append(("panchromatic", band))
            levels[2].append(("pan", band))
    aliases: dict[str, str] = {}
    for level in levels:
        found: dict[str, set[str]] = {}
        for spelling, band in level:
            key = _normalise_name(spelling)
            if key and key not in aliases:
                found.setdefault(key, set()).add(band)
        for key, targets in found.items():
            if len(targets) == 1:
                aliases[key] = next(iter(targets))
    return aliases


# --------------------------------------------------------------------------- SRF sets


def _readonly(array: np.ndarray) -> np.ndarray:
    array = np.array(array, dtype=np.float64, copy=True)
    array.flags.writeable = False
    return array


@dataclass(eq=False)
class SRFSet:
    """Relative spectral response curves of some bands on one shared wavelength grid.

    ``curves[i]`` is the response of ``band_names[i]`` at ``wavelength_nm`` (any
    non-negative scale; only the shape matters).  Arrays are stored read-only because
    library sets share cached data.
    """

    name: str
    band_names: list[str]
    wavelength_nm: np.ndarray
    curves: np.ndarray
    display_name: str = ""
    long_names: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.band_names = [str(b) for b in self.band_names]
        self.wavelength_nm = _readonly(self.wavelength_nm)
        self.curves = _readonly(np.atleast_2d(self.curves))
        if self.wavelength_nm.ndim != 1 or self.curves.shape != (
            len(self.band_names),
            self.wavelength_nm.size,
        ):
            raise SensorError(
                f"SRF set '{self.name}' needs curves of shape (bands, wavelengths) = "
                f"({len(self.band_names)}, {self.wavelength_nm.size}), got {self.curves.shape}."
            )
        if len(set(self.band_names)) != len(self.band_names):
            raise SensorError(f"SRF set '{self.name}' has duplicate band names: {self.band_names}.")
        if not self.display_name:
            self.display_name = self.name
        if len(self.long_names) != len(self.band_names):
            self.long_names = [""] * len(self.band_names)
        if not self.aliases:
            self.aliases = _build_band_aliases(self.band_names)

    def __len__(self) -> int:
        return len(self.band_names)

    def resolve(self, band: str) -> str:
        """Canonical name of ``band`` written in any accepted spelling ('B02', 'blue', ...)."""
        if band in self.band_names:
            return band
        found = self.aliases.get(_normalise_name(band))
        if found is None:
            raise SensorError(
                f"{self.display_name} has no band '{band}'; its bands are "
                f"{', '.join(self.band_names)}."
            )
        return found

    def select(self, band_names: str | Iterable[str] | None) -> SRFSet:
        """The subset of bands named (any spelling), in the order given; None keeps all."""
        if band_names is None:
            return self
        if isinstance(band_names, str):
            band_names = [band_names]
        chosen = [self.resolve(b) for b in band_names]
        if not chosen:
            raise SensorError(f"No bands of {self.display_name} were selected.")
        repeated = sorted({b for b in chosen if chosen.count(b) > 1})
        if repeated:
            raise SensorError(
                f"Band(s) {', '.join(repeated)} of {self.display_name} were asked for more than once."
            )
        index = [self.band_names.index(b) for b in chosen]
        kept = set(chosen)
        return SRFSet(
            name=self.name,
            band_names=chosen,
            wavelength_nm=self.wavelength_nm,
            curves=self.curves[index],
            display_name=self.display_name,
            long_names=[self.long_names[i] for i in index],
            aliases={k: v for k, v in self.aliases.items() if v in kept},
        )

    def centroids_nm(self) -> np.ndarray:
        """Response-weighted mean wavelength of each band (trapezoid rule)."""
        area = _trapezoid(self.curves, self.wavelength_nm, axis=1)
        return _trapezoid(self.curves * self.wavelength_nm, self.wavelength_nm, axis=1) / area

    def half_max_ranges_nm(self) -> np.ndarray:
        """(m, 2) outermost wavelengths where each curve crosses half its peak (interpolated)."""
        wl = self.wavelength_nm
        out = np.empty((len(self), 2))
        for i, curve in enumerate(self.curves):
            half = curve.max() / 2.0
            above = np.flatnonzero(curve >= half)
            first, last = above[0], above[-1]
            lo = wl[first]
            if first > 0:
                lo = np.interp(half, [curve[first - 1], curve[first]], [wl[first - 1], wl[first]])
            hi = wl[last]
            if last < wl.size - 1:
                hi = np.interp(half, [curve[last + 1], curve[last]], [wl[last + 1], wl[last]])
            out[i] = lo, hi
        return out

    def fwhm_nm(self) -> np.ndarray:
        """Full width at half maximum of each band (outermost half-maximum crossings)."""
        ranges = self.half_max_ranges_nm()
        return ranges[:, 1] - ranges[:, 0]

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the set in the library CSV format (readable by :func:`load_srf_csv`)."""
        path = Path(path)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["wavelength_nm", *self.band_names])
        for wl, values in zip(self.wavelength_nm, self.curves.T):
            writer.writerow([f"{wl:.6g}", *(f"{v:.8g}" for v in values)])
        path.write_text(buffer.getvalue(), encoding="utf-8")
        return path


# --------------------------------------------------------------------------- CSV parsing


def _parse_srf_csv(text: str, source: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Parse the library CSV format; every defect raises SensorError naming the line."""
    numbered = [
        (number, line)
        for number, line in enumerate(text.lstrip("\ufeff").splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not numbered:
        raise SensorError(f"SRF file {source} is empty.")
    rows = [(number, row) for (number, _), row in zip(numbered, csv.reader(text for _, text in numbered))]
    header_line, header = rows[0]
    header = [cell.strip() for cell in header]
    first = header[0].lower() if header else ""
    if first == "wavelength_nm":
        factor = 1.0
    elif first in {"wavelength_um", "wavelength_\u00b5m", "wavelength_\u03bcm"}:
        factor = 1000.0
    else:
        raise SensorError(
            f"SRF file {source}: the first column must be 'wavelength_nm' (line {header_line} "
            f"starts with '{header[0] if header else ''}')."
        )
    columns = header[1:]
    if not columns:
        raise SensorError(f"SRF file {source} has a wavelength column but no band columns.")
    if any(not c for c in columns):
        raise SensorError(f"SRF file {source} has an empty band column name on line {header_line}.")
    if len(set(columns)) != len(columns):
        raise SensorError(f"SRF file {source} repeats a band column name: {', '.join(columns)}.")
    if len(rows) < 3:
        raise SensorError(f"SRF file {source} needs at least two wavelength rows.")
    values = np.empty((len(rows) - 1, len(header)))
    for r, (number, row) in enumerate(rows[1:]):
        if len(row) != len(header):
            raise SensorError(
                f"SRF file {source}, line {number}: {len(row)} values, expected {len(header)} "
                f"(one per column of the header)."
            )
        for c, cell in enumerate(row):
            try:
                value = float(cell)
            except ValueError:
                raise SensorError(
                    f"SRF file {source}, line {number}, column '{header[c]}': "
                    f"'{cell.strip()}' is not a number."
                ) from None
            if not math.isfinite(value):
                raise SensorError(
                    f"SRF file {source}, line {number}, column '{header[c]}': value is not finite."
                )
            values[r, c] = value
    wavelength = values[:, 0] * factor
    steps = np.diff(wavelength)
    if np.any(steps <= 0):
        bad = int(np.flatnonzero(steps <= 0)[0]) + 1
        raise SensorError(
            f"SRF file {source}: wavelengths must increase strictly, but line {rows[bad + 1][0]} "
            f"({values[bad, 0]:g}) does not exceed the line before ({values[bad - 1, 0]:g})."
        )
    if wavelength[0] <= 0:
        raise SensorError(f"SRF file {source}: wavelengths must be positive.")
    curves = values[:, 1:].T
    negative = np.argwhere(curves < 0)
    if negative.size:
        band, r = negative[0]
        raise SensorError(
            f"SRF file {source}, line {rows[r + 1][0]}, column '{columns[band]}': negative "
            f"response {curves[band, r]:g}."
        )
    empty = [columns[i] for i in range(len(columns)) if curves[i].max() <= 0]
    if empty:
        raise SensorError(f"SRF file {source}: band(s) {', '.join(empty)} have no positive response.")
    return wavelength, curves, columns


# --------------------------------------------------------------------------- registry


@functools.cache
def _library_root():
    """The bundled curves: the installed package ``geolift.srf_library``, or, when running
    from a source checkout that was never installed, the repository's ``srf_library/``."""
    try:
        return resources.files(_LIBRARY_PACKAGE)
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "srf_library"


@functools.cache
def _registry() -> dict[str, dict]:
    text = _library_root().joinpath("sensors.json").read_text(encoding="utf-8")
    return json.loads(text)["sensors"]


@functools.cache
def _sensor_lookup() -> dict[str, str]:
    """Normalised spelling -> canonical sensor name (canonical names and aliases)."""
    lookup: dict[str, str] = {}
    for canonical, entry in _registry().items():
        for spelling in (canonical, *entry.get("aliases", ())):
            key = _normalise_name(spelling)
            if lookup.get(key, canonical) != canonical:
                raise RuntimeError(f"sensors.json: '{spelling}' names two sensors")
            lookup[key] = canonical
    return lookup


@functools.cache
def _read_library_csv(filename: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Parse one bundled CSV once (cached; arrays read-only)."""
    resource = _library_root()
    for part in filename.split("/"):
        resource = resource.joinpath(part)
    wavelength, curves, columns = _parse_srf_csv(resource.read_text(encoding="utf-8"), filename)
    return _readonly(wavelength), _readonly(curves), tuple(columns)


@functools.cache
def _library_arrays(canonical: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Curves of all files of a sensor merged onto the union of their wavelength grids."""
    parts = [_read_library_csv(f) for f in _registry()[canonical]["files"]]
    if len(parts) == 1:
        return parts[0]
    grid = np.unique(np.concatenate([wl for wl, _, _ in parts]))
    curves = [
        np.interp(grid, wl, curve, left=0.0, right=0.0) for wl, part, _ in parts for curve in part
    ]
    columns = tuple(c for _, _, cols in parts for c in cols)
    return _readonly(grid), _readonly(np.array(curves)), columns


def sensors(include_alternatives: bool = False) -> list[str]:
    """Canonical names of the bundled sensors, e.g. 'sentinel2a', 'landsat8'.

    Alternative transcriptions of a sensor (e.g. the Apache-2.0 ESA v3.0 Sentinel-2
    curves, see PROVENANCE.md) are listed only with ``include_alternatives=True``.
    """
    return [
        name
        for name, entry in _registry().items()
        if include_alternatives or "alternative_to" not in entry
    ]


def sensor_aliases() -> dict[str, str]:
    """Alternative sensor names -> canonical name, e.g. 'sentinel2' -> 'sentinel2a'."""
    return {
        alias: canonical
        for canonical, entry in _registry().items()
        for alias in entry.get("aliases", ())
    }


def _canonical_sensor(sensor: str) -> str:
    if not isinstance(sensor, str):
        raise SensorError(f"A sensor name must be a string, got {type(sensor).__name__}.")
    found = _sensor_lookup().get(_normalise_name(sensor))
    if found is None:
        raise SensorError(
            f"Unknown sensor '{sensor}'; available sensors: {', '.join(sensors())} "
            f"(also {', '.join(sensors(True)[len(sensors()):])}; aliases such as s2a, l8, wv3 work too)."
        )
    return found


def sensor_info(sensor: str) -> dict:
    """Registry facts of a bundled sensor: canonical name, display name, publisher, files, aliases."""
    canonical = _canonical_sensor(sensor)
    entry = _registry()[canonical]
    return {
        "name": canonical,
        "display_name": entry["display_name"],
        "publisher": entry["publisher"],
        "files": list(entry["files"]),
        "aliases": list(entry.get("aliases", ())),
        "alternative_to": entry.get("alternative_to"),
    }


def load_sensor(sensor: str) -> SRFSet:
    """Curves of every band of a bundled sensor (any accepted spelling of its name)."""
    canonical = _canonical_sensor(sensor)
    entry = _registry()[canonical]
    wavelength, curves, columns = _library_arrays(canonical)
    band_names = [c.split("_", 1)[0] for c in columns]
    long_names = [c.split("_", 1)[1] if "_" in c else "" for c in columns]
    return SRFSet(
        name=canonical,
        band_names=band_names,
        wavelength_nm=wavelength,
        curves=curves,
        display_name=entry["display_name"],
        long_names=long_names,
        aliases=_build_band_aliases(band_names, columns, entry.get("band_aliases")),
    )


SensorLike = Union[str, os.PathLike, SRFSet]


def _as_srfset(sensor: SensorLike) -> SRFSet:
    """A library sensor name, a path to a custom CSV (str ending in .csv or PathLike), or an SRFSet."""
    if isinstance(sensor, SRFSet):
        return sensor
    if isinstance(sensor, os.PathLike) or (
        isinstance(sensor, str) and sensor.lower().endswith(".csv")
    ):
        return load_srf_csv(sensor)
    return load_sensor(sensor)


def bands(sensor: SensorLike) -> list[str]:
    """Band names of a sensor as the agency writes them ('B1', ..., 'B8A', 'PAN')."""
    return list(_as_srfset(sensor).band_names)


def resolve_band(sensor: SensorLike, name: str) -> str:
    """Canonical band name for any accepted spelling: 'B02'/'b2'/'blue'/'B2_blue' -> 'B2'."""
    return _as_srfset(sensor).resolve(name)


def describe_sensor(sensor: SensorLike) -> list[dict]:
    """One dict per band for listings: band, long name, aliases, centroid, FWHM, half-max range."""
    srf = _as_srfset(sensor)
    centroids = srf.centroids_nm()
    ranges = srf.half_max_ranges_nm()
    peaks = srf.wavelength_nm[np.argmax(srf.curves, axis=1)]
    rows = []
    for i, band in enumerate(srf.band_names):
        own = _normalise_name(band)
        spellings = sorted(k for k, v in srf.aliases.items() if v == band and not k.startswith(own))
        rows.append(
            {
                "band": band,
                "long_name": srf.long_names[i],
                "aliases": spellings,
                "centroid_nm": round(float(centroids[i]), 1),
                "fwhm_nm": round(float(ranges[i, 1] - ranges[i, 0]), 1),
                "half_max_range_nm": (round(float(ranges[i, 0]), 1), round(float(ranges[i, 1]), 1)),
                "peak_nm": round(float(peaks[i]), 1),
            }
        )
    return rows


# --------------------------------------------------------------------------- custom SRFs


def load_srf_csv(path: str | os.PathLike) -> SRFSet:
    """Custom SRFs from a CSV in the library format.

    First column ``wavelength_nm`` (``wavelength_um`` is accepted and converted), then
    one column per band with a non-negative relative response (any scale); '#' lines
    are comments.  Band names are the column names as written; the parts before and
    after the first '_' also work as spellings when unambiguous ('B2_blue' -> 'B2', 'blue').
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SensorError(f"SRF file {path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SensorError(f"SRF file {path} cannot be read as text ({exc}).") from None
    wavelength, curves, columns = _parse_srf_csv(text, str(path))
    return SRFSet(
        name=path.stem,
        band_names=columns,
        wavelength_nm=wavelength,
        curves=curves,
        display_name=f"SRF file {path.name}",
        long_names=[c.split("_", 1)[1] if "_" in c else "" for c in columns],
    )


def gaussian_srf(
    centers_nm: float | Sequence[float],
    fwhm_nm: float | Sequence[float],
    names: Sequence[str] | None = None,
    name: str = "gaussian",
) -> SRFSet:
    """Gaussian band responses from centre wavelengths and FWHM (nm), e.g. HyMap metadata.

    Curves are peak-normalised and sampled over +-3 FWHM of every band at 1 nm or
    FWHM/10, whichever is finer.  Default band names are 'B1', 'B2', ...
    """
    centers = np.atleast_1d(np.asarray(centers_nm, dtype=np.float64))
    fwhm = np.atleast_1d(np.asarray(fwhm_nm, dtype=np.float64))
    if fwhm.size == 1 and centers.ndim == 1:
        fwhm = np.full(centers.shape, fwhm.item())
    if centers.ndim != 1 or centers.size == 0:
        raise SensorError("gaussian_srf needs a 1-D list of at least one band centre.")
    if fwhm.shape != centers.shape:
        raise SensorError(
            f"gaussian_srf got {centers.size} centres but {fwhm.size} FWHM values."
        )
    if not (np.all(np.isfinite(centers)) and np.all(centers > 0)):
        raise SensorError("gaussian_srf band centres must be finite and positive (nm).")
    if not (np.all(np.isfinite(fwhm)) and np.all(fwhm > 0)):
        raise SensorError("gaussian_srf FWHM values must be finite and positive (nm).")
    if names is None:
        names = [f"B{i + 1}" for i in range(centers.size)]
    names = [str(n) for n in names]
    if len(names) != centers.size:
        raise SensorError(f"gaussian_srf got {centers.size} centres but {len(names)} names.")
    step = min(1.0, float(fwhm.min()) / 10.0)
    lo = float(np.min(centers - 3 * fwhm))
    hi = float(np.max(centers + 3 * fwhm))
    grid = np.linspace(lo, hi, int(math.ceil((hi - lo) / step)) + 1)
    curves = np.exp(-_FOUR_LN2 * ((grid[None, :] - centers[:, None]) / fwhm[:, None]) ** 2)
    return SRFSet(name=name, band_names=names, wavelength_nm=grid, curves=curves)


# --------------------------------------------------------------------------- units


def _unit_factor(values: np.ndarray, units: str | None) -> float:
    """Multiplier to nanometres for ``units``, or guessed from the magnitude when no unit is stated."""
    factor = unit_factor(units)
    if factor is None:
        return guess_unit_factor(values)
    if math.isnan(factor):
        raise MetadataError(f"Wavelength units {units!r} mean band numbers; geolift needs wavelengths.")
    return factor


def to_nm(values, units: str | None = None) -> np.ndarray:
    """Wavelengths in nanometres.

    ``units`` accepts 'nm'/'nanometers'/'nanometres' and 'um'/'µm'/'micrometers'/
    'microns' (any case).  With None (or ENVI's 'Unknown') the unit is guessed from the
    magnitude: all values <= 30 are micrometres (optical/thermal sensors end near 15 µm),
    all values >= 100 are nanometres, anything else is ambiguous and raises MetadataError.
    """
    array = np.asarray(values, dtype=np.float64)
    return array * _unit_factor(array, units)
