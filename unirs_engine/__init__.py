"""UniRS engine: model, checkpoints, inputs and inference. Imports no QGIS and no Qt.

Kept light on purpose: importing the package must not import torch, so the QGIS side can
use `unirs_engine.worker.client` without pulling the model stack into QGIS.
"""

__version__ = "0.1.0"
