"""The answers GeoPackage schema, shared by the Processing sinks and the dock.

One table per task ("ask", "change", "classify"), one feature per answer, geometry = the footprint
of what the model looked at (the first input's bounds), attributes = what was asked and answered.
"""

from __future__ import annotations

import json
import os

from osgeo import ogr
from qgis.core import (QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsFeature, QgsField,
                       QgsFields, QgsGeometry, QgsProject, QgsRectangle, QgsVectorFileWriter,
                       QgsVectorLayer, QgsWkbTypes)
from qgis.PyQt.QtCore import QDate, QDateTime, QVariant

from .answer_style import style_answers_file

TABLES = {"ask": "ask", "change": "change", "classify": "classify"}  # result["task"] -> table


def _fields(*spec: tuple[str, QVariant.Type]) -> QgsFields:
    out = QgsFields()
    for name, kind in spec:
        out.append(QgsField(name, kind))
    return out


def ask_fields() -> QgsFields:
    return _fields(("question", QVariant.String), ("answer", QVariant.String),
                   ("clue", QVariant.String), ("model", QVariant.String), ("layer", QVariant.String),
                   ("extent_crs", QVariant.String), ("created", QVariant.DateTime))


def change_fields() -> QgsFields:
    return _fields(("caption", QVariant.String), ("changed", QVariant.Bool),
                   ("date_before", QVariant.Date), ("date_after", QVariant.Date),
                   ("layer_before", QVariant.String), ("layer_after", QVariant.String),
                   ("model", QVariant.String), ("created", QVariant.DateTime),
                   ("score", QVariant.Double), ("score_kind", QVariant.String), ("pair_mode", QVariant.String))


def classify_fields() -> QgsFields:
    return _fields(("label", QVariant.String), ("answer", QVariant.String),
                   ("frames", QVariant.String), ("classes", QVariant.String),
                   ("model", QVariant.String), ("created", QVariant.DateTime))


FIELDS_FOR_TASK = {"ask": ask_fields, "change": change_fields, "classify": classify_fields}
# How the model saw a pair (the result's extra["pair_mode"]), in the dock's and the log's words.
PAIR_MODE_TEXT = {"cem": "Compared through the Change Extraction module",
                  "two-images": "Compared as two images in one prompt (the model has no Change Extraction module)"}


def change_details(result: dict) -> str:
    """One line on how a change answer was reached: the pair mode and the change score."""
    extra = result.get("extra") or {}
    mode = PAIR_MODE_TEXT.get(extra.get("pair_mode"), "Compared")
    score = extra.get("change_score")
    if score is None:
        return mode
    return f"{mode}; change score {score:.3g} ({extra.get('change_score_kind', '?')})"


def footprint_crs(result: dict) -> QgsCoordinateReferenceSystem:
    """CRS of the footprint (invalid when the input was not georeferenced)."""
    georef = result.get("georef") or [{}]
    return QgsCoordinateReferenceSystem(georef[0].get("crs") or "")


def footprint(result: dict) -> QgsGeometry:
    """Polygon of the first input's bounds, in footprint_crs(result); empty when not georeferenced."""
    georef = result.get("georef") or [{}]
    bounds = georef[0].get("bounds")
    if not bounds or not georef[0].get("crs"):
        return QgsGeometry()
    return QgsGeometry.fromRect(QgsRectangle(*bounds))


def _result_values(result: dict) -> dict:
    """Attribute values every table can take straight from an engine result."""
    extra = result.get("extra") or {}
    frames = extra.get("frames")
    classes = extra.get("classes")
    return {
        "answer": result.get("answer"),
        "caption": result.get("answer"),
        "clue": result.get("clue"),
        "model": result.get("model_id"),
        "created": QDateTime.currentDateTimeUtc(),
        "changed": extra.get("changed"),
        "score": extra.get("change_score"),
        "score_kind": extra.get("change_score_kind"),
        "pair_mode": extra.get("pair_mode"),
        "label": extra.get("label"),
        "frames": json.dumps(frames) if frames is not None else None,
        "classes": ", ".join(classes) if isinstance(classes, list) else classes,
    }


def feature_from_result(result: dict, fields: QgsFields, *,
                        dest_crs: QgsCoordinateReferenceSystem | None = None, **attrs) -> QgsFeature:
    """A feature with the footprint (transformed to `dest_crs` if given) and every field of
    `fields` filled from the result, `attrs` overriding (e.g. question=..., layer=...)."""
    values = {**_result_values(result), **attrs}
    feature = QgsFeature(fields)
    for name in fields.names():
        value = values.get(name)
        if isinstance(value, QDate) and not value.isValid():
            value = None
        feature[name] = value
    geom = footprint(result)
    if not geom.isEmpty() and dest_crs is not None and dest_crs.isValid():
        src = footprint_crs(result)
        if src != dest_crs:
            geom.transform(QgsCoordinateTransform(src, dest_crs, QgsProject.instance()))
    feature.setGeometry(geom)
    return feature


def _create_table(gpkg_path: str, table: str, fields: QgsFields,
                  crs: QgsCoordinateReferenceSystem) -> None:
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    options.layerName = table
    if os.path.exists(gpkg_path):
        options.actionOnExistingFile = QgsVectorFileWriter.CreateOrOverwriteLayer
    writer = QgsVectorFileWriter.create(gpkg_path, fields, QgsWkbTypes.Polygon, crs,
                                        QgsProject.instance().transformContext(), options)
    if writer.hasError() != QgsVectorFileWriter.NoError:
        raise OSError(f"cannot create table {table!r} in {gpkg_path}: {writer.errorMessage()}")
    del writer  # closes the file


def table_exists(gpkg_path: str, table: str) -> bool:
    """True when `gpkg_path` has `table` (asked of GDAL directly: a QgsVectorLayer on a missing file
    or table logs OGR warnings)."""
    if not os.path.isfile(gpkg_path):
        return False
    ds = ogr.Open(gpkg_path)
    return ds is not None and ds.GetLayerByName(table) is not None


def table_uri(gpkg_path: str, table: str) -> str:
    return f"{gpkg_path}|layername={table}"


def open_table(gpkg_path: str, table: str, name: str | None = None) -> QgsVectorLayer:
    """The answers table as an (OGR) vector layer; invalid if the file or table does not exist."""
    return QgsVectorLayer(table_uri(gpkg_path, table), name or table, "ogr")


def ensure_table(gpkg_path: str, task: str, crs: QgsCoordinateReferenceSystem) -> None:
    """Create the table of `task` in `gpkg_path` (and the file) when missing, with its default style;
    a table written by an earlier version gets the fields it lacks."""
    table = TABLES[task]
    if table_exists(gpkg_path, table):
        _add_missing_fields(gpkg_path, table, FIELDS_FOR_TASK[task]())
        return
    _create_table(gpkg_path, table, FIELDS_FOR_TASK[task](),
                  crs if crs.isValid() else QgsCoordinateReferenceSystem("EPSG:4326"))
    style_answers_file(table_uri(gpkg_path, table), task)


def _add_missing_fields(gpkg_path: str, table: str, fields: QgsFields) -> None:
    layer = open_table(gpkg_path, table)
    missing = [field for field in fields if layer.fields().indexOf(field.name()) < 0]
    if missing and not layer.dataProvider().addAttributes(missing):
        raise OSError(f"cannot add the fields {', '.join(f.name() for f in missing)} to table {table!r} "
                      f"of {gpkg_path}")


def append_answer(gpkg_path: str, table: str, result: dict, **attrs) -> int:
    """Append one answer to `table` of `gpkg_path` (file and table are created when missing, in the
    footprint's CRS) and return the new feature id."""
    ensure_table(gpkg_path, result["task"], footprint_crs(result))
    layer = open_table(gpkg_path, table)
    if not layer.isValid():
        raise OSError(f"cannot open table {table!r} of {gpkg_path}")
    feature = feature_from_result(result, layer.fields(), dest_crs=layer.crs(), **attrs)
    ok, added = layer.dataProvider().addFeatures([feature])
    if not ok:
        errors = "; ".join(layer.dataProvider().errors()) or "unknown error"
        raise OSError(f"cannot append to table {table!r} of {gpkg_path}: {errors}")
    return added[0].id()
