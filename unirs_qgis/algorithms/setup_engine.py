"""unirs:setup_engine — build or update the managed engine environment, or (CHECK_ONLY) test the engine.

Headless: `qgis_process.bin run unirs:setup_engine` (add `CHECK_ONLY=true` to only test).
"""

from __future__ import annotations

from qgis.core import (QgsProcessingException, QgsProcessingOutputString, QgsProcessingParameterBoolean,
                       QgsProcessingParameterDefinition, QgsProcessingParameterString)

from unirs_engine.runtime.check import summary
from unirs_engine.runtime.installer import SetupCancelled, SetupError, setup_engine
from unirs_qgis.algorithms.base import CANCELLED, UniRSAlgorithm
from unirs_qgis.engine_link import shutdown_client
from unirs_qgis.engine_runtime import check_engine_with
from unirs_qgis.settings import PluginSettings


class SetupEngineAlgorithm(UniRSAlgorithm):
    def name(self) -> str:
        return "setup_engine"

    def displayName(self) -> str:  # noqa: N802
        return self.tr("Set up the UniRS engine")

    def group(self) -> str:
        return self.tr("Engine")

    def groupId(self) -> str:  # noqa: N802
        return "engine"

    def summary(self) -> str:
        return ("Installs what the UniRS engine needs (torch, transformers, rasterio, ...) into its own Python "
                "environment in your user data folder (UNIRS_HOME overrides it), never into QGIS's Python. "
                "Running it again is quick when nothing changed; after a plugin update it updates the "
                "environment. A failed or cancelled setup keeps the previous environment. torch is the CUDA "
                "build when an NVIDIA GPU is found, else the CPU build.")

    def parameter_help(self) -> dict[str, str]:
        return {"CHECK_ONLY": "install nothing: answer one question with the configured model and report "
                              "the model, device and GPU",
                "FORCE": "start from a fresh environment even when it is up to date",
                "TORCH_INDEX_URL": "where torch is downloaded from (a mirror, or a CUDA wheel index such as "
                                   "https://download.pytorch.org/whl/cu128); empty: automatic"}

    def initAlgorithm(self, config=None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterBoolean("CHECK_ONLY", self.tr("Only test the engine"),
                                                        defaultValue=False))
        force = QgsProcessingParameterBoolean("FORCE", self.tr("Rebuild even when up to date"), defaultValue=False)
        index = QgsProcessingParameterString("TORCH_INDEX_URL", self.tr("Torch index URL"), optional=True)
        for advanced in (force, index):
            advanced.setFlags(advanced.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(advanced)
        for name, label in (("PYTHON", "Engine Python"), ("TORCH", "torch version"), ("DEVICE", "Device")):
            self.addOutput(QgsProcessingOutputString(name, self.tr(label)))

    def process(self, parameters: dict, context, feedback) -> dict:
        settings = PluginSettings.load()
        if self.parameterAsBoolean(parameters, "CHECK_ONLY", context):
            return self._check(settings, feedback)
        index = self.parameterAsString(parameters, "TORCH_INDEX_URL", context).strip() or settings.torch_index_url
        try:
            outcome = setup_engine(torch_index_url=index, force=self.parameterAsBoolean(parameters, "FORCE", context),
                                   log=feedback.pushConsoleInfo, is_cancelled=feedback.isCanceled,
                                   progress=lambda fraction, text: (feedback.setProgress(100 * fraction),
                                                                    feedback.setProgressText(text)))
        except SetupCancelled as exc:
            raise QgsProcessingException(f"{CANCELLED}: {exc}") from None
        except SetupError as exc:
            raise QgsProcessingException(str(exc)) from None
        shutdown_client()  # a worker started before uses the old environment
        feedback.pushInfo(outcome.summary())
        record = outcome.record
        return {"PYTHON": str(record.python), "TORCH": record.torch_version, "DEVICE": record.device}

    def _check(self, settings: PluginSettings, feedback) -> dict:
        feedback.setProgressText("testing the engine (imports, model load, one answer)")
        report = check_engine_with(settings)
        if not report.get("ok"):
            raise QgsProcessingException(summary(report))
        feedback.pushInfo(summary(report))
        device = report["device"] + (f" ({report['gpu']})" if report.get("gpu") else "")
        return {"PYTHON": report["python"], "TORCH": report["torch"], "DEVICE": device}
