"""Reading and writing georeferenced rasters: the only package that touches raster files.

io turns files into float32 band-first arrays with ``NaN`` for nodata and
wavelengths in nanometres, and turns such arrays back into a tiled, compressed
GeoTIFF, atomically.

Reading
-------
``open_scene(source, *, require_wavelengths=False, nodata=None, resampling="bilinear",
check_data=True) -> Scene``

``source`` is one raster (GeoTIFF, ENVI, JP2, anything GDAL opens) or a list of
rasters (typically single-band files such as ``T33UUU_..._B02.jp2`` or
``LC08_..._SR_B4.TIF``). An ENVI image may be given by its data file or its
``.hdr``; gzip-compressed ENVI (``file compression = 1``) works because GDAL
reads it. URLs (``s3://``, ``gs://``, ``az://``, ``http(s)://``,
``ftp://``) and GDAL ``/vsi...`` paths are read by GDAL (:func:`gdal_path`).
Opening only inspects metadata (plus a cheap decimated look at the
data, see ``check_data``); pixels are read later, window by window, with
``Scene.read``. A ``Scene`` keeps no file open, so it pickles (Dask) and leaks
nothing.

* **Georeferencing** - every file needs a CRS and a real geotransform; missing
  ones (or GCP-only files) raise ``MetadataError``. A missing file or a file GDAL
  cannot read raises ``InputError``; so does a scene with no valid pixel.
* **Band lists** are stacked on the grid of the finest file (smallest pixel
  area, first in the list among equals). Files on that exact grid are read
  directly; the others are warped onto it on the fly with ``resampling``
  (``"bilinear"`` by default: smooth, and it ignores nodata neighbours;
  ``"nearest"`` keeps original values; ``"cubic"`` is also accepted). All files
  must share one CRS (``InputError`` otherwise). A single-band file's band name
  is the band token of its file name (``B02``, ``B8A``, ``B4``, ``B10``: the
  last ``_Bnn[A]`` token, upper-cased), else its description, else its file
  stem; mapping tokens to a sensor's bands is ``geolift.srf.resolve_band``'s job.
* **Wavelengths and FWHM** come from the first source that gives a value for
  every band, in this order: band metadata ``wavelength`` / ``fwhm`` /
  ``wavelength_units`` (GeoTIFFs written by geolift, the EnMAP-Box, GDAL 3.10's
  ENVI driver), the ENVI header lists (GDAL's ``ENVI`` metadata domain), an
  ENVI-style ``{a, b, ...}`` list in the dataset metadata, GDAL 3.10's
  ``IMAGERY`` domain (``CENTRAL_WAVELENGTH_UM``, ``FWHM_UM``; rounded to 1 nm by
  GDAL, hence last), and finally band descriptions such as
  ``"band 8 (0.460000 Micrometers)"`` or ``"Band 1 (450.5 nm)"``. FWHM is taken
  from the first source that has it for every band. Values are converted to
  nanometres (micrometres x 1000, millimetres x 1e6; spellings in
  :mod:`geolift.units`). Only when no unit is given anywhere is the unit guessed
  from magnitude: all values up to 30 mean micrometres, all from 100 on
  nanometres (a ``GeoliftWarning`` says so), anything else is refused.
* **Nodata** is the file's nodata value per band (or ``nodata=`` to override it,
  e.g. for Sentinel-2 JP2s that do not declare their 0), a per-dataset mask or
  alpha band when there is one, and NaN in float files; all become ``NaN``.
* **Scale/offset** from GDAL band metadata are applied when they are not the
  identity (``value = raw * scale + offset``). Ad-hoc tags such as
  ``scale_factor_reflectance`` are *not* applied; they are kept in ``Scene.tags``.
* **Bad bands**: a ``bbl`` band tag or ENVI ``bbl`` list; ``Scene.good_bands``
  is False where ``bbl`` is 0, so the pipeline can leave those bands out of
  training and write nodata for them.

``Scene`` fields: ``paths``, ``crs``, ``transform``, ``width``, ``height``,
``count``, ``dtypes``, ``nodata`` (per band, as in the file), ``scales``,
``offsets``, ``wavelengths_nm``, ``fwhm_nm`` (``np.ndarray`` or ``None``),
``wavelength_source``, ``good_bands`` (bool array), ``band_names``,
``descriptions`` (raw band descriptions, ``""`` when absent, for
``srf.resolve_band``), ``tags`` (dataset metadata of the first file).
Helpers: ``path``, ``dtype``, ``res``, ``bounds``, ``shape``,
``window_transform(window)``, ``good_band_indices()``, ``block_windows(size)``.

``Scene.read(window=None, bands=None, out_shape=None, resampling=None)`` returns
float32 ``(bands, rows, cols)`` with NaN for nodata. ``window`` is a rasterio
``Window`` or ``((row_start, row_stop), (col_start, col_stop))`` inside the
scene; ``bands`` are **0-based** band indices (or a boolean mask such as
``scene.good_bands``); ``out_shape=(rows, cols)`` resamples the window
(default method: ``average`` when shrinking, ``bilinear`` when enlarging;
integer files are resampled in their own type, i.e. rounded).

Writing
-------
``check_output_path(path, *, overwrite=False, inputs=()) -> Path`` checks, before
any heavy work, that the output can be written: its folder exists and is
writable, it is not an existing file (unless ``overwrite``), and it is none of
``inputs`` (never overwritten, even with ``overwrite``). It raises
``OutputError``.

``HSIWriter(path, grid, bands, encoding=None, *, tags=None, parameters=None,
overwrite=False, inputs=())`` writes onto a :class:`~geolift.grid.Grid` the bands
described by :class:`OutputBands` (wavelengths, FWHM, names, good-band flags),
stored as an :class:`Encoding` says (float32, or int16 with scale/offset; tiles,
compression, threads), atomically: see :mod:`geolift.io.write`.
``write_hsi(path, cube, *, crs, transform, wavelengths_nm, ...)`` writes a whole
array in one call.

Layout
------
``paths`` (what GDAL opens, which files belong together, output checks),
``spectral`` (wavelengths, FWHM, bad bands from metadata), ``read`` (``Scene``,
``open_scene``), ``encoding`` and ``write``. Readers of delivered products (one
module per product family) build on ``read`` and ``spectral``.
"""

from geolift.grid import block_windows
from geolift.io.encoding import COMPRESSIONS, Encoding
from geolift.io.paths import band_token, check_output_path, gdal_path, is_remote
from geolift.io.read import Scene, open_scene
from geolift.io.write import HSIWriter, OutputBands, write_hsi

__all__ = [
    "COMPRESSIONS",
    "Encoding",
    "HSIWriter",
    "OutputBands",
    "Scene",
    "band_token",
    "block_windows",
    "check_output_path",
    "gdal_path",
    "is_remote",
    "open_scene",
    "write_hsi",
]
