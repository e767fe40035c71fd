"""The plugin object QGIS creates: it only registers the geolift Processing provider."""

from pathlib import Path

from qgis.core import QgsApplication

from .provider import GeoliftProvider


class GeoliftPlugin:
    """Adds and removes the provider; ``initProcessing`` is what qgis_process calls."""

    def __init__(self, iface):
        self.iface = iface
        self.provider = None

    def initProcessing(self):  # noqa: N802 - QGIS API name
        self.provider = GeoliftProvider(Path(__file__).resolve().parent)
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802 - QGIS API name
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
