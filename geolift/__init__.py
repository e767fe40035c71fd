"""geolift: self-supervised hyperspectral super-resolution of georeferenced scenes.

The core library (no CLI code): ``geolift.srf`` (sensor response curves),
``geolift.model`` (the SpectraLift engine), ``geolift.evaluate`` (Wald protocol,
metrics, baselines), ``geolift.io`` (rasters in and out), ``geolift.align``,
``geolift.refine`` (the consistency step), ``geolift.fuse`` (the pipeline) and
``geolift.batch`` (many pairs on Dask); ``geolift.xarray`` (lazy DataArrays in and out, ``docs/xarray.md``).
``docs/architecture.md`` draws the layout.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from geolift import errors, srf
from geolift.errors import GeoliftError
from geolift.model import SpectraLift

try:
    __version__ = _version("geolift")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["GeoliftError", "SpectraLift", "errors", "srf", "__version__"]
