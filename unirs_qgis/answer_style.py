"""How answers look on the map, the same in the dock and in Processing outputs: the footprint of what
the model looked at as an outline, the answer as a wrapped label with a white buffer inside it.

The style is saved in the GeoPackage as the table's default style, so a file opens the same in any
QGIS; Processing outputs are also styled by a layer post-processor when they are loaded. The map notes
of the dock (write_back.py) use the same text format.
"""

from __future__ import annotations

from qgis.core import (QgsFillSymbol, QgsPalLayerSettings, QgsProcessingLayerPostProcessorInterface,
                       QgsSingleSymbolRenderer, QgsTextBufferSettings, QgsTextFormat, QgsVectorLayer,
                       QgsVectorLayerSimpleLabeling, QgsWkbTypes)
from qgis.PyQt.QtGui import QColor

from .layer_styles import save_default_style

STYLE_NAME = "unirs answers"
OUTLINE_COLOUR = "255,140,0,255"   # orange: visible on imagery, unlike the answer text
WRAP = 40                          # characters per label line
# What a label says, per table (answers.TABLES): the question and its answer, the change caption,
# the event label.
LABEL_EXPRESSION = {"ask": "concat(\"question\", '\n→ ', \"answer\")",
                    "change": "\"caption\"",
                    "classify": "coalesce(\"label\", \"answer\")"}


def text_format(size: float = 9.0) -> QgsTextFormat:
    """Dark text on a white halo: readable on any imagery."""
    fmt = QgsTextFormat()
    fmt.setSize(size)
    fmt.setColor(QColor(20, 20, 60))
    buffer = QgsTextBufferSettings()
    buffer.setEnabled(True)
    buffer.setSize(1.2)
    buffer.setColor(QColor(255, 255, 255, 230))
    fmt.setBuffer(buffer)
    return fmt


def answer_labeling(task: str) -> QgsVectorLayerSimpleLabeling:
    """The answer inside its footprint, wrapped, horizontal; labels that would collide are left out
    (the engine never draws one over another)."""
    settings = QgsPalLayerSettings()
    settings.fieldName = LABEL_EXPRESSION[task]
    settings.isExpression = True
    settings.placement = QgsPalLayerSettings.Horizontal      # anywhere inside the polygon, horizontal
    settings.autoWrapLength = WRAP
    settings.useMaxLineLengthForAutoWrap = True
    settings.multilineAlign = QgsPalLayerSettings.MultiLeft     # like the dock's notes
    settings.setFormat(text_format())
    return QgsVectorLayerSimpleLabeling(settings)


def outline_renderer() -> QgsSingleSymbolRenderer:
    """The footprint as an outline, so the imagery stays visible."""
    return QgsSingleSymbolRenderer(QgsFillSymbol.createSimple(
        {"style": "no", "outline_color": OUTLINE_COLOUR, "outline_width": "0.6"}))


def style_answers_layer(layer: QgsVectorLayer, task: str, labels: bool = True) -> None:
    """Outline + answer labels (set up but switched off with labels=False: the dock's notes show the
    answers; Layer Properties ▸ Labels switches them back on)."""
    if layer.geometryType() == QgsWkbTypes.PolygonGeometry:
        layer.setRenderer(outline_renderer())
    if layer.isSpatial():
        layer.setLabeling(answer_labeling(task))
        layer.setLabelsEnabled(labels)
    layer.triggerRepaint()


def style_answers_file(uri: str, task: str) -> None:
    """Style the table at `uri` (an OGR GeoPackage uri) and save that as its default style."""
    layer = QgsVectorLayer(uri, task, "ogr")
    if not layer.isValid():
        raise OSError(f"cannot open {uri} to save its style")
    style_answers_layer(layer, task)
    save_default_style(layer, STYLE_NAME, "UniRS answers: footprint outline, answer labels")


class AnswerLayerStyler(QgsProcessingLayerPostProcessorInterface):
    """Styles a Processing answers output when it is loaded into the project."""

    def __init__(self, task: str):
        super().__init__()
        self.task = task

    def postProcessLayer(self, layer, context, feedback) -> None:  # noqa: N802 (QGIS hook)
        if isinstance(layer, QgsVectorLayer):
            style_answers_layer(layer, self.task)
