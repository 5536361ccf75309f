"""Write one engine answer back into the project, in the four places that survive save and reload.

1. a point-text note in the "UniRS notes" annotation layer, at the centre of what the model saw;
2. a feature in the answers GeoPackage (the table for the task), shown as a labelled layer;
3. a history line in each source layer's QgsLayerMetadata (Layer Properties > Metadata);
4. a JSON record list in each source layer's custom property "unirs/answers" (the dock's history).
Annotation-layer custom properties are not saved on QGIS 3.22, so the note's item id is kept in (4).
"""

from __future__ import annotations

import json
import textwrap
import uuid

from qgis.core import (QgsAnnotationLayer, QgsAnnotationPointTextItem, QgsCoordinateReferenceSystem,
                       QgsCoordinateTransform, QgsFillSymbol, QgsMapLayer, QgsPalLayerSettings,
                       QgsPointXY, QgsProject, QgsRectangle, QgsTextBufferSettings, QgsTextFormat,
                       QgsVectorLayer, QgsVectorLayerSimpleLabeling)
from qgis.PyQt.QtCore import QDate, QDateTime, Qt
from qgis.PyQt.QtGui import QColor

from . import answers
from .dates import layer_date
from .settings import PluginSettings

NOTES_LAYER_NAME = "UniRS notes"
ANSWERS_PROPERTY = "unirs/answers"
NOTE_WIDTH, NOTE_LINES = 48, 3   # characters per line / answer lines of a map note
LABEL_EXPRESSION = {"ask": '"answer"', "change": '"caption"',
                    "classify": 'coalesce("label", "answer")'}


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


def note_text(question: str, answer: str | None) -> str:
    """The map note: the question on one line, the answer wrapped below it, both kept short (the
    full text is in the GeoPackage and the layer's history)."""
    question = " ".join(question.split())
    if len(question) > NOTE_WIDTH:
        question = question[:NOTE_WIDTH - 1] + "…"
    lines = textwrap.wrap(answer or "", NOTE_WIDTH) or [""]
    if len(lines) > NOTE_LINES:
        lines = lines[:NOTE_LINES]
        lines[-1] = lines[-1][:NOTE_WIDTH - 1] + "…"
    return "\n".join([question, *lines])


def _queried_area(result: dict, source_layers: list[QgsMapLayer]
                  ) -> tuple[QgsRectangle, QgsCoordinateReferenceSystem]:
    """What the model looked at: the first input's bounds, else (not georeferenced) the first layer."""
    geom = answers.footprint(result)
    if not geom.isEmpty():
        return geom.boundingBox(), answers.footprint_crs(result)
    return source_layers[0].extent(), source_layers[0].crs()


def notes_layer(project: QgsProject, crs: QgsCoordinateReferenceSystem) -> QgsAnnotationLayer:
    """The project's "UniRS notes" annotation layer, created in `crs` when missing."""
    for layer in project.mapLayersByName(NOTES_LAYER_NAME):
        if isinstance(layer, QgsAnnotationLayer):
            return layer
    layer = QgsAnnotationLayer(NOTES_LAYER_NAME,
                               QgsAnnotationLayer.LayerOptions(project.transformContext()))
    layer.setCrs(crs)
    project.addMapLayer(layer)
    return layer


def _note_format() -> QgsTextFormat:
    """Dark text on a white halo: readable on any imagery."""
    fmt = QgsTextFormat()
    fmt.setSize(9)
    fmt.setColor(QColor(20, 20, 60))
    buffer = QgsTextBufferSettings()
    buffer.setEnabled(True)
    buffer.setSize(1.2)
    buffer.setColor(QColor(255, 255, 255, 230))
    fmt.setBuffer(buffer)
    return fmt


def _add_note(project: QgsProject, area: QgsRectangle, crs: QgsCoordinateReferenceSystem,
              text: str) -> tuple[QgsAnnotationLayer, str]:
    layer = notes_layer(project, crs)
    centre = QgsPointXY(area.center())
    if crs.isValid() and layer.crs().isValid() and crs != layer.crs():
        centre = QgsCoordinateTransform(crs, layer.crs(), project).transform(centre)
    item = QgsAnnotationPointTextItem(text, centre)
    item.setFormat(_note_format())
    item.setAlignment(Qt.AlignLeft)
    item_id = layer.addItem(item)
    layer.triggerRepaint()
    return layer, item_id


def answers_layer(project: QgsProject, gpkg_path: str, table: str) -> QgsVectorLayer:
    """The project layer showing `table` of the answers GeoPackage (added once, labelled)."""
    wanted = answers.open_table(gpkg_path, table).source()
    for layer in project.mapLayers().values():
        if isinstance(layer, QgsVectorLayer) and layer.source() == wanted:
            layer.reload()            # the feature was written through another connection
            layer.updateExtents()
            layer.triggerRepaint()
            return layer
    layer = answers.open_table(gpkg_path, table, f"UniRS answers ({table})")
    if not layer.isValid():
        raise OSError(f"cannot open table {table!r} of {gpkg_path}")
    layer.renderer().setSymbol(QgsFillSymbol.createSimple(
        {"color": "0,0,0,0", "outline_color": "255,170,0,255", "outline_width": "0.6"}))
    label = QgsPalLayerSettings()
    label.fieldName = LABEL_EXPRESSION[table]
    label.isExpression = True
    label.placement = QgsPalLayerSettings.OutsidePolygons   # the map note sits at the centre
    layer.setLabeling(QgsVectorLayerSimpleLabeling(label))
    layer.setLabelsEnabled(True)
    project.addMapLayer(layer)
    return layer


def _gpkg_attributes(result: dict, source_layers: list[QgsMapLayer], question: str,
                     crs: QgsCoordinateReferenceSystem) -> dict:
    """Attributes the result itself does not carry (which layers, dates, the question)."""
    if result["task"] == "change":
        before, after = source_layers[0], source_layers[-1]
        return {"layer_before": before.name(), "layer_after": after.name(),
                "date_before": layer_date(before) or QDate(),
                "date_after": layer_date(after) or QDate()}
    if result["task"] == "classify":
        return {}
    return {"question": question, "layer": ", ".join(layer.name() for layer in source_layers),
            "extent_crs": crs.authid() or crs.toWkt()}


def _append_to_layer(layer: QgsMapLayer, record: dict) -> None:
    records = answers_of(layer) + [record]
    layer.setCustomProperty(ANSWERS_PROPERTY, json.dumps(records))
    metadata = layer.metadata()
    metadata.addHistoryItem(f"{record['created']} UniRS {record['task']} ({record['model']}): "
                            f"{record['question']} -> {record['answer']}")
    layer.setMetadata(metadata)


def record_answer(project: QgsProject, source_layers: list[QgsMapLayer], result: dict,
                  question: str, *, answers_gpkg: str | None = None) -> dict:
    """Write `result` (Result.to_dict() of an answer about `source_layers`) back into `project`.
    `answers_gpkg` defaults to the plugin setting. Returns the stored record (see module doc)."""
    if not source_layers:
        raise ValueError("record_answer: no source layer given")
    task = result["task"]
    table = answers.TABLES[task]
    area, crs = _queried_area(result, source_layers)
    gpkg_path = answers_gpkg or PluginSettings.load().answers_path(project)

    notes, item_id = _add_note(project, area, crs, note_text(question, result.get("answer")))
    fid = answers.append_answer(gpkg_path, table, result,
                                **_gpkg_attributes(result, source_layers, question, crs))
    gpkg_layer = answers_layer(project, gpkg_path, table)

    record = {
        "id": uuid.uuid4().hex[:12],
        "created": QDateTime.currentDateTimeUtc().toString(Qt.ISODate),
        "task": task,
        "question": question,
        "answer": result.get("answer"),
        "clue": result.get("clue"),
        "model": result.get("model_id"),
        "device": result.get("device"),
        "extra": result.get("extra") or {},
        "layers": [layer.id() for layer in source_layers],
        "extent": [area.xMinimum(), area.yMinimum(), area.xMaximum(), area.yMaximum()],
        "extent_crs": crs.authid() or crs.toWkt(),
        "note": {"layer": notes.id(), "item": item_id},
        "gpkg": {"path": gpkg_path, "table": table, "fid": fid, "layer": gpkg_layer.id()},
    }
    for layer in {layer.id(): layer for layer in source_layers}.values():
        _append_to_layer(layer, record)
    project.setDirty(True)
    return record
