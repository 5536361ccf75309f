"""Write one engine answer back into the project, in the four places that survive save and reload.

1. a map note in the "UniRS notes" annotation layer (notes.py: one note per area, never overlapping);
2. a feature in the project's answers GeoPackage (the table for the task), whose layer draws the
   footprint's outline (answers_store.py: one store per project, layers in the "UniRS" group);
3. a history line in each source layer's QgsLayerMetadata (Layer Properties > Metadata);
4. a JSON record list in each source layer's custom property "unirs/answers" (the dock's history).
"""

from __future__ import annotations

import uuid

from qgis.core import (Qgis, QgsCoordinateReferenceSystem, QgsMapLayer, QgsMapSettings, QgsMessageLog,
                       QgsProject, QgsRectangle)
from qgis.PyQt.QtCore import QDate, QDateTime, Qt

from . import answers, answers_store
from .answers_store import answers_of
from .dates import layer_date
from .notes import add_to_note
from .settings import PluginSettings


def _queried_area(result: dict, source_layers: list[QgsMapLayer]
                  ) -> tuple[QgsRectangle, QgsCoordinateReferenceSystem]:
    """What the model looked at: the first input's bounds, else (not georeferenced) the first layer."""
    geom = answers.footprint(result)
    if not geom.isEmpty():
        return geom.boundingBox(), answers.footprint_crs(result)
    return source_layers[0].extent(), source_layers[0].crs()


def _gpkg_attributes(result: dict, source_layers: list[QgsMapLayer], question: str,
                     crs: QgsCoordinateReferenceSystem, dates: list[QDate | None]) -> dict:
    """Attributes the result itself does not carry (which layers, dates, the question)."""
    if result["task"] == "change":
        before, after = source_layers[0], source_layers[-1]
        return {"layer_before": before.name(), "layer_after": after.name(),
                "date_before": dates[0] or QDate(), "date_after": dates[-1] or QDate()}
    if result["task"] == "classify":
        return {}
    return {"question": question, "layer": ", ".join(layer.name() for layer in source_layers),
            "extent_crs": crs.authid() or crs.toWkt()}


def _append_to_layer(layer: QgsMapLayer, record: dict) -> None:
    answers_store.set_answers(layer, answers_of(layer) + [record])
    metadata = layer.metadata()
    metadata.addHistoryItem(f"{record['created']} UniRS {record['task']} ({record['model']}): "
                            f"{record['question']} -> {record['answer']}")
    layer.setMetadata(metadata)


def record_answer(project: QgsProject, source_layers: list[QgsMapLayer], result: dict,
                  question: str, *, answers_gpkg: str | None = None, view: QgsMapSettings | None = None,
                  dates: list[QDate | None] | None = None) -> dict:
    """Write `result` (Result.to_dict() of an answer about `source_layers`) back into `project`.
    `answers_gpkg` defaults to the project's store; `view` (the canvas's map settings) places and
    scales the note; `dates` are the source layers' dates (default: their own). Returns the stored
    record (see module doc)."""
    if not source_layers:
        raise ValueError("record_answer: no source layer given")
    task = result["task"]
    table = answers.TABLES[task]
    area, crs = _queried_area(result, source_layers)
    gpkg_path = answers_gpkg or PluginSettings.load().answers_path(project)
    dates = dates or [layer_date(layer) for layer in source_layers]
    answers_store.watch(project)

    notes, item_id = add_to_note(project, area, crs, question, result.get("answer"), view)
    fid = answers.append_answer(gpkg_path, table, result,
                                **_gpkg_attributes(result, source_layers, question, crs, dates))
    gpkg_layer = answers_store.answers_layer(project, gpkg_path, table)

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
        "dates": [date.toString(Qt.ISODate) if date else None for date in dates],
        "extent": [area.xMinimum(), area.yMinimum(), area.xMaximum(), area.yMaximum()],
        "extent_crs": crs.authid() or crs.toWkt(),
        "note": {"layer": notes.id(), "item": item_id},
        "gpkg": {"path": gpkg_path, "table": table, "fid": fid, "layer": gpkg_layer.id()},
    }
    for layer in {layer.id(): layer for layer in source_layers}.values():
        _append_to_layer(layer, record)
    project.setDirty(True)
    QgsMessageLog.logMessage(f"answer written: table '{table}' of {gpkg_path} (feature {fid}), "
                             f"note in '{notes.name()}', history of "
                             + ", ".join(f"'{layer.name()}'" for layer in source_layers),
                             answers_store.LOG_TAG, Qgis.Info)
    return record
