"""The geolift Processing provider: one algorithm, GeoTIFF outputs, an executable setting."""

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsProcessingProvider, QgsSettings

from .fuse_algorithm import FuseAlgorithm
from .runner import GeoliftNotFound, load_config, resolve_command

#: Tag of geolift's messages in the QGIS Log Messages panel.
LOG_TAG = "geolift"

#: Processing setting (Settings > Options > Processing > Providers > geolift) holding the executable.
EXECUTABLE_SETTING = "GEOLIFT_EXECUTABLE"


def executable_setting() -> str:
    """The executable the user set in the Processing options, or ''."""
    value = QgsSettings().value(f"Processing/Configuration/{EXECUTABLE_SETTING}", "")
    return str(value or "")


class GeoliftProvider(QgsProcessingProvider):
    """Processing provider ``geolift``; reads the install record once, at load time."""

    def __init__(self, plugin_dir):
        super().__init__()
        self.plugin_dir = plugin_dir
        self.config = load_config(plugin_dir)

    def id(self):
        return "geolift"

    def name(self):
        return "geolift"

    def longName(self):  # noqa: N802 - QGIS API name
        version = self.config.get("geolift_version")
        return f"geolift {version}" if version else "geolift"

    def icon(self):
        return QgsApplication.getThemeIcon("/processingAlgorithm.svg")

    def load(self):
        self._add_setting()
        self._log_executable()
        self.refreshAlgorithms()
        return True

    def unload(self):
        try:
            from processing.core.ProcessingConfig import ProcessingConfig

            ProcessingConfig.removeSetting(EXECUTABLE_SETTING)
        except (ImportError, KeyError):
            pass

    def loadAlgorithms(self):  # noqa: N802 - QGIS API name
        self.addAlgorithm(FuseAlgorithm(self.config))

    def defaultRasterFileExtension(self):  # noqa: N802 - QGIS API name
        return "tif"

    def supportedOutputRasterLayerExtensions(self):  # noqa: N802 - QGIS API name
        return ["tif", "tiff"]

    def _add_setting(self):
        """Show the executable in Processing's options dialog (when the Processing plugin is there)."""
        try:
            from processing.core.ProcessingConfig import ProcessingConfig, Setting
        except ImportError:
            return
        ProcessingConfig.settingIcons[self.name()] = self.icon()
        ProcessingConfig.addSetting(
            Setting(
                self.name(),
                EXECUTABLE_SETTING,
                "geolift executable (empty: the one recorded by 'geolift qgis install', then PATH)",
                "",
                valuetype=Setting.FILE,
            )
        )
        ProcessingConfig.readSettings()

    def _log_executable(self):
        """Say in the QGIS log which geolift will run, or clearly that none can be found."""
        try:
            command = resolve_command(self.config, executable_setting())
        except GeoliftNotFound as exc:
            QgsMessageLog.logMessage(str(exc), LOG_TAG, Qgis.Critical)
        else:
            QgsMessageLog.logMessage(f"Using geolift: {command.describe()}", LOG_TAG, Qgis.Info)
