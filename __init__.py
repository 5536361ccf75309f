"""QGIS entry point. The repository root is the plugin folder (deployed as `unirs`).

Import layout, solved once: QGIS imports this folder as the package `unirs`, so `unirs_qgis` and
`unirs_engine` would only be reachable as `unirs.unirs_qgis`. classFactory puts this folder on sys.path
and imports them as top-level packages, exactly as tests (editable install) and the engine worker
subprocess (PYTHONPATH=<plugin dir>) do. All plugin code therefore uses `unirs_qgis.*`/`unirs_engine.*`.
Nothing here touches iface or imports Qt: qgis_process calls classFactory(None).
"""

import os
import sys

PLUGIN_DIR = os.path.dirname(os.path.abspath(__file__))


def classFactory(iface):  # noqa: N802 (name fixed by QGIS)
    if PLUGIN_DIR not in sys.path:
        sys.path.insert(0, PLUGIN_DIR)
    from unirs_qgis.plugin import UniRSPlugin

    return UniRSPlugin(iface)
