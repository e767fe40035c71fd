"""Sensor spectral response functions (SRFs) and the MSI-from-HSI response matrix.

SpectraLift needs a matrix ``R`` (m x C) that turns a hyperspectral spectrum (C bands)
into what a multispectral sensor (m bands) would have measured: ``msi = R @ hsi``.
This module owns the bundled sensor curves (``srf_library/``, shipped as the package
``geolift.srf_library``), the names users type for sensors and bands, custom curves
(CSV or Gaussian) and the construction of ``R`` for any hyperspectral band set.

How ``R`` is built (see :func:`build_response`)
-------------------------------------------------
Each hyperspectral band ``c`` is modelled as a Gaussian response ``G_c`` centred on its
wavelength with its FWHM.  When no FWHM is known, the FWHM is taken as the local band
spacing: the median of the (up to four) centre-to-centre steps around the band, which is
what a contiguously sampled imaging spectrometer has (FWHM ~ spacing) and which stays
sensible next to gaps and in overlapping detector regions.  At every wavelength the
shares ``u_c = G_c / sum_k G_k`` split the spectrum among the HSI bands (a partition of
unity, so unevenly spaced or overlapping bands are not counted twice), and

    R[i, c] = integral(S_i * u_c over covered wavelengths) / integral(S_i over covered wavelengths)

for MSI band response ``S_i``.  Rows therefore sum to 1 and a spectrum that is linear in
wavelength maps to its value at the band's response-weighted centroid.

Coverage rule
-------------
The HSI's spectral coverage is the union of (a) each HSI band's half-maximum interval
``[centre - FWHM/2, centre + FWHM/2]`` and (b) the span between neighbouring centres,
unless that step is larger than ``GAP_FACTOR`` (2.5) times the larger of the two FWHMs
(a gap, e.g. removed water-vapour bands).  An MSI band is covered when at least
``MIN_COVERAGE`` (95 %) of its response integral lies inside the coverage; otherwise it
raises :class:`SpectralCoverageError` naming the band and both ranges, or is dropped with
a :class:`GeoliftWarning` when ``drop_uncovered=True``.
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
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np

from geolift.errors import GeoliftWarning, MetadataError, SensorError, SpectralCoverageError

__all__ = [
    "GAP_FACTOR",
    "MIN_COVERAGE",
    "SRFSet",
    "SpectralResponse",
    "bands",
    "build_response",
    "describe_sensor",
    "gaussian_srf",
    "load_sensor",
    "load_srf_csv",
    "resolve_band",
    "response_matrix",
    "sensor_aliases",
    "sensor_info",
    "sensors",
    "to_nm",
]

log = logging.getLogger("geolift")

#: A step between neighbouring HSI band centres wider than this many FWHMs is a gap.
GAP_FACTOR = 2.5
#: Share of an MSI band's response integral that must lie inside the HSI coverage.
MIN_COVERAGE = 0.95

_LIBRARY_PACKAGE = "geolift.srf_library"
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz
_FOUR_LN2 = 4.0 * math.log(2.0)

_NM_UNITS = {"nm", "nanometer", "nanometers", "nanometre", "nanometres"}
_UM_UNITS = {
    "um", "\u00b5m", "\u03bcm", "micrometer", "micrometers", "micrometre", "micrometres",
    "micron", "microns",
}
_UNKNOWN_UNITS = {"", "unknown", "none"}


# --------------------------------------------------------------------------- names


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

    def select(self, band_names: str | Iterable[str] | None) -> "SRFSet":
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
    rows = [(number, row) for (number, _), row in zip(numbered, csv.reader(l for _, l in numbered))]
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


@functools.lru_cache(maxsize=None)
def _library_root():
    """The bundled curves: the installed package ``geolift.srf_library``, or, when running
    from a source checkout that was never installed, the repository's ``srf_library/``."""
    try:
        return resources.files(_LIBRARY_PACKAGE)
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "srf_library"


@functools.lru_cache(maxsize=None)
def _registry() -> dict[str, dict]:
    text = _library_root().joinpath("sensors.json").read_text(encoding="utf-8")
    return json.loads(text)["sensors"]


@functools.lru_cache(maxsize=None)
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


@functools.lru_cache(maxsize=None)
def _read_library_csv(filename: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Parse one bundled CSV once (cached; arrays read-only)."""
    resource = _library_root()
    for part in filename.split("/"):
        resource = resource.joinpath(part)
    wavelength, curves, columns = _parse_srf_csv(resource.read_text(encoding="utf-8"), filename)
    return _readonly(wavelength), _readonly(curves), tuple(columns)


@functools.lru_cache(maxsize=None)
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
    """Multiplier to nanometres for ``units``, or guessed from the magnitude when None."""
    if units is not None:
        key = re.sub(r"[\s.]+", "", str(units).strip().lower())
        if key in _NM_UNITS:
            return 1.0
        if key in _UM_UNITS:
            return 1000.0
        if key not in _UNKNOWN_UNITS:
            raise MetadataError(
                f"Unknown wavelength units '{units}'; use nm/nanometers or um/µm/micrometers."
            )
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise MetadataError("Cannot guess wavelength units: no finite wavelength values.")
    if finite.max() <= 30.0:
        return 1000.0
    if finite.min() >= 100.0:
        return 1.0
    raise MetadataError(
        f"Cannot tell whether wavelengths {finite.min():g}-{finite.max():g} are in nm or µm; "
        f"pass the units explicitly."
    )


def to_nm(values, units: str | None = None) -> np.ndarray:
    """Wavelengths in nanometres.

    ``units`` accepts 'nm'/'nanometers'/'nanometres' and 'um'/'µm'/'micrometers'/
    'microns' (any case).  With None (or ENVI's 'Unknown') the unit is guessed from the
    magnitude: all values <= 30 are micrometres (optical/thermal sensors end near 15 µm),
    all values >= 100 are nanometres, anything else is ambiguous and raises MetadataError.
    """
    array = np.asarray(values, dtype=np.float64)
    return array * _unit_factor(array, units)


# --------------------------------------------------------------------------- response matrix


@dataclass(eq=False)
class SpectralResponse:
    """An MSI-from-HSI response matrix and what went into it.

    ``matrix`` is (m, C) float32 with rows summing to 1 (``msi = matrix @ hsi``);
    ``bands`` are the kept MSI band names (row order), ``dropped`` those not covered;
    ``coverage`` is the covered share of each requested band's response.
    """

    matrix: np.ndarray
    bands: list[str]
    dropped: list[str]
    sensor: str
    coverage: dict[str, float]
    hsi_wavelength_nm: np.ndarray
    hsi_fwhm_nm: np.ndarray
    fwhm_estimated: bool
    covered_ranges_nm: list[tuple[float, float]]


def _validate_hsi(
    wavelengths, fwhm, units: str | None
) -> tuple[np.ndarray, np.ndarray | None]:
    wl = np.asarray(wavelengths, dtype=np.float64)
    if wl.ndim != 1 or wl.size == 0:
        raise MetadataError(f"HSI wavelengths must be a 1-D list of band centres, got shape {wl.shape}.")
    if not np.all(np.isfinite(wl)):
        bad = int(np.flatnonzero(~np.isfinite(wl))[0])
        raise MetadataError(f"HSI wavelength of band {bad + 1} is not a finite number.")
    factor = _unit_factor(wl, units)
    wl = wl * factor
    if wl.min() <= 0:
        raise MetadataError("HSI wavelengths must be positive.")
    if wl.size > 1:
        # Any order is fine (EnMAP's VNIR and SWIR detectors overlap, so file order is not
        # wavelength order); two bands at the same centre are not.
        ranked = np.sort(wl)
        same = np.flatnonzero(np.diff(ranked) == 0)
        if same.size:
            dup = ranked[same[0]]
            first, second = (int(i) + 1 for i in np.flatnonzero(wl == dup)[:2])
            raise MetadataError(
                f"HSI wavelengths must be distinct: band {second} ({dup:g} nm) repeats band {first}."
            )
    if fwhm is None:
        if wl.size < 2:
            raise MetadataError("A single HSI band needs its FWHM to build a response matrix.")
        return wl, None
    fw = np.asarray(fwhm, dtype=np.float64)
    if fw.ndim == 0:
        fw = np.full(wl.shape, float(fw))
    if fw.shape != wl.shape:
        raise MetadataError(
            f"Got {wl.size} HSI wavelengths but {fw.size} FWHM values; they must match one to one."
        )
    if not (np.all(np.isfinite(fw)) and np.all(fw > 0)):
        raise MetadataError("HSI FWHM values must be finite and positive.")
    fw = fw * factor
    if fw.max() > 1000.0 or fw.min() < 0.01:
        raise MetadataError(
            f"HSI FWHM values of {fw.min():g}-{fw.max():g} nm are implausible; FWHM must be in the "
            f"same units as the wavelengths."
        )
    return wl, fw


def _local_spacing(sorted_wl: np.ndarray) -> np.ndarray:
    """FWHM stand-in: median of the up to four centre steps around each band."""
    steps = np.diff(sorted_wl)
    widths = np.empty_like(sorted_wl)
    for k in range(sorted_wl.size):
        widths[k] = np.median(steps[max(0, k - 2): k + 2])
    return widths


def _coverage_intervals(centres: np.ndarray, widths: np.ndarray) -> list[tuple[float, float]]:
    """Union of half-maximum intervals and non-gap spans between neighbours (sorted input)."""
    spans = [(c - w / 2.0, c + w / 2.0) for c, w in zip(centres, widths)]
    for k in range(centres.size - 1):
        if centres[k + 1] - centres[k] <= GAP_FACTOR * max(widths[k], widths[k + 1]):
            spans.append((centres[k], centres[k + 1]))
    spans.sort()
    merged = [list(spans[0])]
    for lo, hi in spans[1:]:
        if lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(float(lo), float(hi)) for lo, hi in merged]


def _trapezoid_weights(grid: np.ndarray) -> np.ndarray:
    steps = np.diff(grid)
    weights = np.zeros_like(grid)
    weights[:-1] += steps / 2.0
    weights[1:] += steps / 2.0
    return weights


def _format_ranges(ranges: list[tuple[float, float]]) -> str:
    return ", ".join(f"{lo:.0f}-{hi:.0f}" for lo, hi in ranges) + " nm"


def build_response(
    sensor_or_srfset: SensorLike,
    band_names: str | Iterable[str] | None,
    wavelengths,
    fwhm_nm=None,
    units: str | None = None,
    drop_uncovered: bool = False,
    min_coverage: float = MIN_COVERAGE,
) -> SpectralResponse:
    """Response matrix mapping HSI spectra to the named MSI bands, with coverage checks.

    ``sensor_or_srfset``: a bundled sensor name, a path to a custom SRF CSV, or an
    :class:`SRFSet`.  ``band_names``: MSI bands in any accepted spelling (None = all).
    ``wavelengths``: HSI band centres, distinct, in any order, in ``units`` (guessed when
    None, see :func:`to_nm`).  ``fwhm_nm``: HSI FWHM per band (or one value) in the same
    units as ``wavelengths``; None estimates it from the band spacing (module docstring).
    Uncovered bands (less than ``min_coverage`` of their response inside the HSI
    coverage) raise SpectralCoverageError, or are dropped with a GeoliftWarning when
    ``drop_uncovered`` is true.  Columns follow the order of ``wavelengths``.
    """
    if not 0.0 < min_coverage <= 1.0:
        raise SensorError(f"min_coverage must lie in (0, 1], got {min_coverage}.")
    srf = _as_srfset(sensor_or_srfset).select(band_names)
    wl, fwhm = _validate_hsi(wavelengths, fwhm_nm, units)
    order = np.argsort(wl)
    centres = wl[order]
    estimated = fwhm is None
    widths = _local_spacing(centres) if estimated else fwhm[order]
    covered = _coverage_intervals(centres, widths)

    # Integrate on a grid fine enough for both the SRF samples and the narrowest HSI band.
    support = np.flatnonzero(srf.curves.max(axis=0) > 0)
    lo = srf.wavelength_nm[max(support[0] - 1, 0)]
    hi = srf.wavelength_nm[min(support[-1] + 1, srf.wavelength_nm.size - 1)]
    step = max(min(1.0, float(widths.min()) / 4.0), (hi - lo) / 200_000)
    grid = np.linspace(lo, hi, int(math.ceil((hi - lo) / step)) + 1)
    responses = np.array([np.interp(grid, srf.wavelength_nm, c, left=0.0, right=0.0) for c in srf.curves])
    weights = _trapezoid_weights(grid)
    inside = np.zeros(grid.shape, dtype=bool)
    for a, b in covered:
        inside |= (grid >= a) & (grid <= b)
    total = responses @ weights
    fractions = (responses @ (weights * inside)) / total

    coverage = {b: float(f) for b, f in zip(srf.band_names, fractions)}
    keep = fractions >= min_coverage
    dropped = [b for b, k in zip(srf.band_names, keep) if not k]
    if dropped:
        ranges = srf.half_max_ranges_nm()
        details = [
            f"{b} (half-maximum {ranges[i, 0]:.0f}-{ranges[i, 1]:.0f} nm, {fractions[i]:.0%} covered)"
            for i, b in enumerate(srf.band_names)
            if not keep[i]
        ]
        span = _format_ranges(covered)
        if not drop_uncovered:
            raise SpectralCoverageError(
                f"{srf.display_name} {'band' if len(details) == 1 else 'bands'} {'; '.join(details)} "
                f"{'is' if len(details) == 1 else 'are'} not covered by the "
                f"hyperspectral bands, which span {span} (at least {min_coverage:.0%} of a band's "
                f"response must lie inside); leave the band out (--bands) or drop it with --drop-uncovered (drop_uncovered=True in Python)."
            )
        if not keep.any():
            raise SpectralCoverageError(
                f"None of the requested {srf.display_name} bands is covered by the hyperspectral "
                f"bands, which span {span}: {'; '.join(details)}."
            )
        message = (
            f"Dropped {srf.display_name} band(s) {'; '.join(details)}: not covered by the "
            f"hyperspectral bands, which span {span}."
        )
        warnings.warn(message, GeoliftWarning, stacklevel=2)

    kept = responses[keep] * (weights * inside)
    matrix_sorted = np.zeros((kept.shape[0], centres.size))
    chunk = max(1, 4_000_000 // centres.size)
    for start in range(0, grid.size, chunk):
        part = slice(start, start + chunk)
        if not kept[:, part].any():
            continue
        z = (grid[part, None] - centres[None, :]) / widths[None, :]
        gauss = np.exp(-_FOUR_LN2 * z * z)
        norm = gauss.sum(axis=1, keepdims=True)
        shares = np.divide(gauss, norm, out=np.zeros_like(gauss), where=norm > 0)
        matrix_sorted += kept[:, part] @ shares
    matrix_sorted /= matrix_sorted.sum(axis=1, keepdims=True)
    matrix = np.empty_like(matrix_sorted)
    matrix[:, order] = matrix_sorted
    fwhm_out = np.empty_like(widths)
    fwhm_out[order] = widths
    log.debug(
        "Response matrix %s x %d HSI bands for %s (FWHM %s), coverage %s",
        len(keep) - len(dropped), centres.size, srf.display_name,
        "estimated from spacing" if estimated else "given", _format_ranges(covered),
    )
    return SpectralResponse(
        matrix=matrix.astype(np.float32),
        bands=[b for b, k in zip(srf.band_names, keep) if k],
        dropped=dropped,
        sensor=srf.name,
        coverage=coverage,
        hsi_wavelength_nm=wl,
        hsi_fwhm_nm=fwhm_out,
        fwhm_estimated=estimated,
        covered_ranges_nm=covered,
    )


def response_matrix(
    sensor_or_srfset: SensorLike,
    band_names: str | Iterable[str] | None,
    wavelengths,
    fwhm_nm=None,
    units: str | None = None,
) -> np.ndarray:
    """The (m, C) float32 response matrix (rows sum to 1); uncovered bands raise.

    ``response_matrix("sentinel2", ["B2", "B3", "B4", "B8"], wavelengths_nm)``.
    See :func:`build_response` for the arguments and the coverage rule.
    """
    return build_response(sensor_or_srfset, band_names, wavelengths, fwhm_nm=fwhm_nm, units=units).matrix
