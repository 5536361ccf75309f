"""One answers GeoPackage per project, its layers in one "UniRS" group, and the answer records kept on
the source layers.

Where the store is: PluginSettings.answers_path (beside the saved project, or in the profile's data
folder before the first save). When the project gets a file name (Save, Save As), relocate_store
copies the store there and re-points the project's answer layers (while the project is written, before
its layers are), so there is never a second store or a second "UniRS answers (…)" layer of one kind.
"""

from __future__ import annotations

import json
import os
import sqlite3

from qgis.core import (Qgis, QgsCoordinateTransform, QgsFeature, QgsLayerTreeGroup, QgsMapLayer,
                       QgsMessageLog, QgsProject, QgsVectorLayer)
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QObject

from . import answers
from .answer_style import style_answers_layer
from .settings import STORE_SUFFIX, PluginSettings, unsaved_folder

GROUP_NAME = "UniRS"
TABLE_PROPERTY = "unirs/table"         # on the project's answer layers: which table they show
ANSWERS_PROPERTY = "unirs/answers"     # on source layers: their answer records (JSON list)
LOG_TAG = "UniRS"

_watchers: dict[int, "_StoreWatcher"] = {}   # per project (C++ address): relocates at each save


# --- answer records on source layers -----------------------------------------------------------
def answers_of(layer: QgsMapLayer) -> list[dict]:
    """The answer records stored on `layer` (oldest first); [] when there are none."""
    raw = layer.customProperty(ANSWERS_PROPERTY, "")
    if not raw:
        return []
    try:
        records = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"layer '{layer.name()}': custom property {ANSWERS_PROPERTY} is not JSON "
                         f"({exc})") from None
    if not isinstance(records, list):
        raise ValueError(f"layer '{layer.name()}': custom property {ANSWERS_PROPERTY} is not a list")
    return records


def set_answers(layer: QgsMapLayer, records: list[dict]) -> None:
    layer.setCustomProperty(ANSWERS_PROPERTY, json.dumps(records))


# --- the layer tree ----------------------------------------------------------------------------
def unirs_group(project: QgsProject) -> QgsLayerTreeGroup:
    """The "UniRS" group at the top of the layer tree (created when missing)."""
    root = project.layerTreeRoot()
    return root.findGroup(GROUP_NAME) or root.insertGroup(0, GROUP_NAME)


def add_to_group(project: QgsProject, layer: QgsMapLayer) -> None:
    project.addMapLayer(layer, False)
    unirs_group(project).addLayer(layer)


def answer_layers(project: QgsProject) -> dict[str, QgsVectorLayer]:
    """The project's answer layers by table."""
    return {layer.customProperty(TABLE_PROPERTY): layer for layer in project.mapLayers().values()
            if isinstance(layer, QgsVectorLayer) and layer.customProperty(TABLE_PROPERTY)}


def store_of(layer: QgsVectorLayer) -> str:
    return layer.source().split("|", 1)[0]


def answers_layer(project: QgsProject, gpkg_path: str, table: str) -> QgsVectorLayer:
    """The project layer showing `table` of the store: one per table, re-pointed when the store
    moved, reloaded after a write, created (in the UniRS group) the first time."""
    wanted = answers.table_uri(gpkg_path, table)
    layer = answer_layers(project).get(table)
    if layer is not None:
        if layer.source() != wanted:
            layer.setDataSource(wanted, layer.name(), "ogr")
        layer.reload()            # the feature was written through another connection
        layer.updateExtents()
        layer.triggerRepaint()
        return layer
    layer = answers.open_table(gpkg_path, table, f"UniRS answers ({table})")
    if not layer.isValid():
        raise OSError(f"cannot open table {table!r} of {gpkg_path}")
    layer.setCustomProperty(TABLE_PROPERTY, table)
    style_answers_layer(layer, table, labels=False)   # the map notes show the answers: draw them once
    add_to_group(project, layer)
    return layer


# --- moving the store with the project ----------------------------------------------------------
class _StoreWatcher(QObject):
    """Relocates the store of its parent project each time the project is written. QgsProject emits
    writeProject before it writes its layers: the saved file already names the new store."""

    def __init__(self, project: QgsProject):
        super().__init__(project)
        self.project = project
        project.writeProject.connect(self.project_written)

    def project_written(self, _document) -> None:
        try:
            relocate_store(self.project)
        except (OSError, ValueError, sqlite3.Error) as exc:  # the save goes on, with the old store
            QgsMessageLog.logMessage(f"the answers could not be moved beside the project: {exc}", LOG_TAG,
                                     Qgis.Warning)


def watch(project: QgsProject) -> None:
    """relocate_store at each save of `project` (idempotent)."""
    key = sip.unwrapinstance(project)
    if key not in _watchers:
        _watchers[key] = _StoreWatcher(project)


def is_default_store(path: str) -> bool:
    """True for a store the plugin placed (not a file the user chose): one of an unsaved project, or
    <project>_unirs_answers.gpkg."""
    return (os.path.dirname(os.path.abspath(path)) == os.path.abspath(unsaved_folder())
            or os.path.basename(path).endswith(STORE_SUFFIX))


def relocate_store(project: QgsProject) -> str | None:
    """Bring the project's answers store to answers_path(project) and re-point its layers and
    records; returns the new path, or None when there was nothing to move. A store of a project not
    saved before is moved; one beside another project is copied (that project keeps it). A file the
    user chose (the answers file setting, or before) stays where it is."""
    settings = PluginSettings.load()
    if not project.fileName() or settings.answers_gpkg:
        return None            # not saved yet (or cleared), or the user's own file: nothing to move
    layers = {table: layer for table, layer in answer_layers(project).items()
              if is_default_store(store_of(layer))}
    new = settings.answers_path(project)
    old_paths = {store_of(layer) for layer in layers.values()} - {new}
    if not old_paths:
        return None
    for old in old_paths:
        if os.path.isfile(old):
            _copy_store(old, new)
    for table, layer in layers.items():
        layer.setDataSource(answers.table_uri(new, table), layer.name(), "ogr")
    _repoint_records(project, old_paths, new)
    for old in old_paths:
        if os.path.dirname(os.path.abspath(old)) == os.path.abspath(unsaved_folder()):   # moved
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.remove(old + suffix)
                except OSError:   # gone already, or still open (Windows): a leftover, not an error
                    pass
    QgsMessageLog.logMessage(f"answers store moved beside the project: {new}", LOG_TAG, Qgis.Info)
    return new


def _copy_store(old: str, new: str) -> None:
    """`old`'s answers into `new`: a whole copy (through SQLite, so rows still in the write-ahead log
    come along) when `new` does not exist, else appended table by table."""
    if not os.path.exists(new):
        source, target = sqlite3.connect(old), sqlite3.connect(new)
        try:
            source.backup(target)
        finally:
            source.close()
            target.close()
        return
    for task, table in answers.TABLES.items():
        if answers.table_exists(old, table):
            _append_table(old, new, task, table)


def _append_table(old: str, new: str, task: str, table: str) -> None:
    source = answers.open_table(old, table)
    answers.ensure_table(new, task, source.crs())
    target = answers.open_table(new, table)
    transform = QgsCoordinateTransform(source.crs(), target.crs(), QgsProject.instance())
    names = [name for name in target.fields().names() if name != "fid"]
    copies = []
    for feature in source.getFeatures():
        copy = QgsFeature(target.fields())
        for name in names:
            copy[name] = feature[name]
        geom = feature.geometry()
        if not geom.isEmpty() and source.crs() != target.crs():
            geom.transform(transform)
        copy.setGeometry(geom)
        copies.append(copy)
    if copies and not target.dataProvider().addFeatures(copies)[0]:
        raise OSError(f"cannot append the answers of {old} to {new}: "
                      + "; ".join(target.dataProvider().errors()))


def _repoint_records(project: QgsProject, old_paths: set[str], new: str) -> None:
    for layer in project.mapLayers().values():
        records = answers_of(layer) if layer.customProperty(ANSWERS_PROPERTY) else []
        moved = [r for r in records if (r.get("gpkg") or {}).get("path") in old_paths]
        for record in moved:
            record["gpkg"]["path"] = new
        if moved:
            set_answers(layer, records)
