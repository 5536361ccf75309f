"""The UniRS Processing provider (id "unirs"): it only lists the algorithms."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from unirs_qgis import ICON_PATH
from unirs_qgis.algorithms.ask import AskAlgorithm
from unirs_qgis.algorithms.classify_sequence import ClassifySequenceAlgorithm
from unirs_qgis.algorithms.describe_change import DescribeChangeAlgorithm
from unirs_qgis.algorithms.review_archive import ReviewArchiveAlgorithm
from unirs_qgis.algorithms.review_changes import ReviewChangesAlgorithm
from unirs_qgis.algorithms.setup_engine import SetupEngineAlgorithm


class UniRSProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "unirs"

    def name(self) -> str:
        return "UniRS"

    def longName(self) -> str:
        return "UniRS remote-sensing vision-language model"

    def icon(self) -> QIcon:
        return QIcon(ICON_PATH)

    def defaultVectorFileExtension(self, hasGeometry: bool = True) -> str:  # noqa: N802,N803
        return "gpkg"  # answers go to a GeoPackage unless the user picks something else

    def loadAlgorithms(self) -> None:  # noqa: N802
        for algorithm in (AskAlgorithm(), DescribeChangeAlgorithm(), ClassifySequenceAlgorithm(),
                          ReviewChangesAlgorithm(), ReviewArchiveAlgorithm(), SetupEngineAlgorithm()):
            self.addAlgorithm(algorithm)
