"""UniRS QGIS plugin: Processing provider, dock and the answers written back to the project.

Imports no torch/transformers: the engine is reached only through `unirs_qgis.engine_link`.
"""

import os as _os

ICON_PATH = _os.path.join(_os.path.dirname(__file__), "icons", "unirs.svg")
