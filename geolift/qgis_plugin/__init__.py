"""QGIS plugin that adds geolift to the Processing Toolbox.

``geolift qgis install`` copies this folder (flat: no sub-packages) into a QGIS
profile as the plugin ``geolift_qgis``. Inside QGIS it imports nothing from
geolift: it runs the geolift command line out of process (see ``runner``), so
QGIS's Python never needs torch. This module stays free of QGIS imports so that
``runner`` can be imported and tested outside QGIS.
"""


def classFactory(iface):  # noqa: N802 - the name QGIS looks for
    """QGIS entry point: return the plugin object (``iface`` is None in qgis_process)."""
    from .plugin import GeoliftPlugin

    return GeoliftPlugin(iface)
