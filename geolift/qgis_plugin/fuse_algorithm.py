"""Processing algorithm ``geolift:fuse``: run ``geolift fuse`` on two raster layers."""

import os

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProviderRegistry,
)

from .runner import (
    FROM_METADATA,
    GeoliftNotFound,
    command_line,
    fuse_arguments,
    partial_outputs,
    remove_new_partial_outputs,
    resolve_command,
    run_geolift,
    sensor_choices,
)

DEVICES = ["cpu", "cuda", "auto"]

HELP = """<p>Fuses a low-resolution hyperspectral raster (HSI) with a high-resolution multispectral raster (MSI) of \
the same place into a hyperspectral GeoTIFF on the MSI's grid (SpectraLift: a small per-pixel network is trained \
to map the MSI sensor's view of the HSI back to the HSI spectra, then applied to the MSI pixels).</p>
<p><b>Sensor</b>: the MSI's sensor, whose spectral response functions (SRFs) are applied to the HSI. \
'from MSI metadata' builds Gaussian SRFs from the MSI's per-band wavelength and FWHM metadata. \
<b>Bands</b>: which sensor bands the MSI holds, in order (e.g. B2,B3,B4,B8); empty means all of them. \
<b>Custom SRF file</b> replaces the sensor by your own SRF CSV.</p>
<p><b>Cloud-Optimized GeoTIFF</b>: the output gets internal overviews and the COG layout (GDAL's COG \
driver), for fast display and for serving over HTTP; it takes a little longer and its tile size must be at least \
128 px (the default 512 is).</p>
<p>Empty training options use geolift's defaults. The run happens in a separate geolift process \
(see the log for the exact command); canceling stops it and leaves no output file.</p>"""


def _file_of(layer, name):
    """The file behind a raster layer; geolift reads files, not QGIS layers."""
    if layer is None:
        raise QgsProcessingException(f"The {name} layer could not be loaded.")
    if layer.providerType() != "gdal":
        raise QgsProcessingException(
            f"The {name} layer must be a raster file (GDAL), not a '{layer.providerType()}' layer."
        )
    path = QgsProviderRegistry.instance().decodeUri("gdal", layer.source()).get("path") or layer.source()
    return path


class FuseAlgorithm(QgsProcessingAlgorithm):
    """Fuse hyperspectral and multispectral (geolift:fuse)."""

    HSI = "HSI"
    MSI = "MSI"
    SENSOR = "SENSOR"
    BANDS = "BANDS"
    SRF_FILE = "SRF_FILE"
    STEPS = "STEPS"
    MEMBERS = "MEMBERS"
    SEED = "SEED"
    DEVICE = "DEVICE"
    HARMONIZE = "HARMONIZE"
    DROP_UNCOVERED = "DROP_UNCOVERED"
    OUTPUT = "OUTPUT"
    QA = "QA"
    COG = "COG"

    def __init__(self, config=None):
        super().__init__()
        self.config = dict(config or {})

    def createInstance(self):  # noqa: N802 - QGIS API name
        return FuseAlgorithm(self.config)

    def name(self):
        return "fuse"

    def displayName(self):  # noqa: N802 - QGIS API name
        return "Fuse hyperspectral and multispectral"

    def shortDescription(self):  # noqa: N802 - QGIS API name
        return "High-resolution hyperspectral raster from a hyperspectral and a multispectral raster (SpectraLift)."

    def shortHelpString(self):  # noqa: N802 - QGIS API name
        return HELP

    def tags(self):
        return ["hyperspectral", "multispectral", "super-resolution", "fusion", "sharpening", "SpectraLift", "geolift"]

    def initAlgorithm(self, config=None):  # noqa: N802 - QGIS API name
        self.addParameter(QgsProcessingParameterRasterLayer(self.HSI, "Hyperspectral raster (low resolution)"))
        self.addParameter(QgsProcessingParameterRasterLayer(self.MSI, "Multispectral raster (high resolution)"))
        self.addParameter(
            QgsProcessingParameterEnum(
                self.SENSOR,
                "Multispectral sensor",
                options=sensor_choices(self.config),
                defaultValue=FROM_METADATA,
                usesStaticStrings=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                self.BANDS, "Sensor bands held by the multispectral raster, in order (e.g. B2,B3,B4,B8)", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.STEPS,
                "Training steps (empty: geolift's default)",
                type=QgsProcessingParameterNumber.Integer,
                minValue=1,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.MEMBERS,
                "Networks trained side by side, then one learns their mean (empty: the recipe's, 3; 1 is faster)",
                type=QgsProcessingParameterNumber.Integer,
                minValue=1,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.SEED,
                "Random seed (empty: geolift's default)",
                type=QgsProcessingParameterNumber.Integer,
                minValue=0,
                optional=True,
            )
        )
        advanced = [
            QgsProcessingParameterEnum(
                self.DEVICE, "Device (empty: geolift's default)", options=DEVICES, optional=True, usesStaticStrings=True
            ),
            QgsProcessingParameterBoolean(
                self.HARMONIZE, "Harmonize the multispectral radiometry to the hyperspectral one", defaultValue=False
            ),
            QgsProcessingParameterBoolean(
                self.DROP_UNCOVERED,
                "Leave out multispectral bands outside the hyperspectral range (else an error)",
                defaultValue=False,
            ),
            QgsProcessingParameterFile(
                self.SRF_FILE,
                "Custom SRF file (CSV; replaces the sensor)",
                behavior=QgsProcessingParameterFile.File,
                extension="csv",
                optional=True,
            ),
        ]
        for parameter in advanced:
            parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(parameter)
        self.addParameter(QgsProcessingParameterBoolean(
            self.COG, "Write a Cloud-Optimized GeoTIFF (internal overviews, COG layout)", defaultValue=False))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Fused hyperspectral raster"))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.QA, "Reliability layer (SRF residual, LR correction, novelty, nodata reason)", optional=True,
            createByDefault=False))

    def checkParameterValues(self, parameters, context):  # noqa: N802 - QGIS API name
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        sensor = self.parameterAsEnumString(parameters, self.SENSOR, context)
        srf_file = self.parameterAsFile(parameters, self.SRF_FILE, context)
        if srf_file and sensor and sensor != FROM_METADATA:
            return False, "Choose either a sensor or a custom SRF file, not both."
        return True, ""

    def _optional_int(self, parameters, name, context):
        value = parameters.get(name)
        if value is None or str(value).strip() == "":
            return None
        return self.parameterAsInt(parameters, name, context)

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802 - QGIS API name
        from .provider import executable_setting

        hsi = _file_of(self.parameterAsRasterLayer(parameters, self.HSI, context), "HSI")
        msi = _file_of(self.parameterAsRasterLayer(parameters, self.MSI, context), "MSI")
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        qa = self.parameterAsOutputLayer(parameters, self.QA, context) if parameters.get(self.QA) else None
        device = self.parameterAsEnumString(parameters, self.DEVICE, context) if parameters.get(self.DEVICE) else None
        args = fuse_arguments(
            hsi,
            msi,
            output,
            sensor=self.parameterAsEnumString(parameters, self.SENSOR, context),
            srf_file=self.parameterAsFile(parameters, self.SRF_FILE, context) or None,
            bands=self.parameterAsString(parameters, self.BANDS, context),
            steps=self._optional_int(parameters, self.STEPS, context),
            members=self._optional_int(parameters, self.MEMBERS, context),
            seed=self._optional_int(parameters, self.SEED, context),
            device=device or None,
            harmonize=self.parameterAsBoolean(parameters, self.HARMONIZE, context),
            drop_uncovered=self.parameterAsBoolean(parameters, self.DROP_UNCOVERED, context),
            qa=qa or None,
            cog=self.parameterAsBoolean(parameters, self.COG, context),
        )
        try:
            command = resolve_command(self.config, executable_setting())
        except GeoliftNotFound as exc:  # the provider already said so in the QGIS log at load time
            raise QgsProcessingException(str(exc)) from None
        feedback.pushCommandInfo(command_line(command.argv + args))

        stage = [None]

        def on_progress(percent, name):
            if name and name != stage[0]:
                stage[0] = name
                feedback.setProgressText(f"geolift: {name}")
            feedback.setProgress(percent)

        partials_before = partial_outputs(output)
        try:
            result = run_geolift(
                command,
                args,
                on_progress=on_progress,
                on_info=feedback.pushInfo,
                on_error=lambda sentence: feedback.reportError(f"geolift: error: {sentence}", True),
                on_warning=lambda sentence: feedback.pushWarning(f"geolift: warning: {sentence}"),
                is_canceled=feedback.isCanceled,
            )
        except GeoliftNotFound as exc:
            raise QgsProcessingException(str(exc)) from None

        if result.canceled or result.returncode != 0:
            for path in remove_new_partial_outputs(output, partials_before):
                feedback.pushInfo(f"Removed the partial output {path}.")
        if result.canceled:
            raise QgsProcessingException("Canceled; geolift stopped and wrote no output.")
        if result.returncode != 0:
            raise QgsProcessingException(result.failure_message)
        if not os.path.isfile(output):
            raise QgsProcessingException(f"geolift finished but wrote no file at {output}.")
        feedback.setProgress(100)
        return {self.OUTPUT: output, **({self.QA: qa} if qa else {})}
