"""How a change-review GeoPackage looks: tiles graduated by score, captions of changed tiles as
labels, the analyst's verdict drawn on top (confirmed = solid dark outline, rejected = grey hatch).

The style is also saved into the GeoPackage as its default style, so the file opens styled in any
QGIS, and re-applied by a Processing layer post-processor when the algorithm's output is loaded.
"""

from __future__ import annotations

from qgis.core import (QgsFillSymbol, QgsGraduatedSymbolRenderer, QgsPalLayerSettings,
                       QgsProcessingLayerPostProcessorInterface, QgsProperty, QgsRendererRange,
                       QgsSymbolLayer, QgsTextBufferSettings, QgsTextFormat, QgsVectorLayer,
                       QgsVectorLayerSimpleLabeling)
from qgis.PyQt.QtGui import QColor

STYLE_NAME = "unirs review"
MAX_SCORE = 2.0  # score = 1 - mean cosine similarity, so it never exceeds 2
# Changed tiles: yellow -> orange -> red as the score grows.
CHANGED_COLOURS = ("#fecc5c", "#fd8d3c", "#e31a1c")
# Verdict drawn through data-defined overrides; NULL falls back to the range's own symbol.
REJECTED_FILL_STYLE = "CASE WHEN \"verdict\" = 'rejected' THEN 'b_diagonal' END"
REJECTED_FILL_COLOUR = "CASE WHEN \"verdict\" = 'rejected' THEN '#9e9e9e' END"
VERDICT_STROKE_COLOUR = ("CASE WHEN \"verdict\" = 'confirmed' THEN '#08306b' "
                         "WHEN \"verdict\" = 'rejected' THEN '#7f7f7f' END")
VERDICT_STROKE_WIDTH = "CASE WHEN \"verdict\" = 'confirmed' THEN 0.8 END"
VERDICT_STROKE_STYLE = "CASE WHEN \"verdict\" = 'rejected' THEN 'dash' END"
# Only changed tiles are labelled (with caption_all every tile has a caption).
LABEL_EXPRESSION = "CASE WHEN \"changed\" THEN wordwrap(\"caption\", 32) END"


def _tile_symbol(fill: str, alpha: int, outline: str) -> QgsFillSymbol:
    symbol = QgsFillSymbol.createSimple({"outline_color": outline, "outline_width": "0.26"})
    colour = QColor(fill)
    colour.setAlpha(alpha)
    symbol.setColor(colour)
    layer = symbol.symbolLayer(0)
    for key, expression in ((QgsSymbolLayer.PropertyFillStyle, REJECTED_FILL_STYLE),
                            (QgsSymbolLayer.PropertyFillColor, REJECTED_FILL_COLOUR),
                            (QgsSymbolLayer.PropertyStrokeColor, VERDICT_STROKE_COLOUR),
                            (QgsSymbolLayer.PropertyStrokeWidth, VERDICT_STROKE_WIDTH),
                            (QgsSymbolLayer.PropertyStrokeStyle, VERDICT_STROKE_STYLE)):
        layer.setDataDefinedProperty(key, QgsProperty.fromExpression(expression))
    return symbol


def score_renderer(threshold: float) -> QgsGraduatedSymbolRenderer:
    """Below `threshold`: nearly transparent; above: three classes up to the top score."""
    step = max(1.0 - threshold, threshold) / 3
    breaks = [threshold + i * step for i in range(3)] + [MAX_SCORE]
    ranges = [QgsRendererRange(0.0, threshold, _tile_symbol("#bdbdbd", 25, "#969696"),
                               f"< {threshold:g} (unchanged)")]
    for lower, upper, colour in zip(breaks, breaks[1:], CHANGED_COLOURS):
        label = f"{lower:.2f} – {upper:.2f}" if upper < MAX_SCORE else f">= {lower:.2f}"
        ranges.append(QgsRendererRange(lower, upper, _tile_symbol(colour, 170, colour), label))
    return QgsGraduatedSymbolRenderer("score", ranges)


def caption_labels() -> QgsVectorLayerSimpleLabeling:
    settings = QgsPalLayerSettings()
    settings.fieldName = LABEL_EXPRESSION
    settings.isExpression = True
    settings.placement = QgsPalLayerSettings.OverPoint
    text = QgsTextFormat()
    text.setSize(8)
    buffer = QgsTextBufferSettings()
    buffer.setEnabled(True)
    buffer.setSize(0.8)
    text.setBuffer(buffer)
    settings.setFormat(text)
    return QgsVectorLayerSimpleLabeling(settings)


def style_review_layer(layer: QgsVectorLayer, threshold: float) -> None:
    """Graduated renderer on "score", caption labels for changed tiles."""
    layer.setRenderer(score_renderer(threshold))
    layer.setLabeling(caption_labels())
    layer.setLabelsEnabled(True)
    layer.triggerRepaint()


def save_default_style(layer: QgsVectorLayer) -> None:
    """Store the layer's current style in its GeoPackage (layer_styles) as the default style."""
    # Saving over an existing style of the same name makes QGIS 3.22 ask in a modal dialog (a hang in
    # Processing and qgis_process): remove ours first.
    related, ids, names, _, _ = layer.listStylesInDatabase()  # this table's styles come first
    for style_id, name in zip(ids[:related], names[:related]):
        if name == STYLE_NAME:
            layer.deleteStyleFromDatabase(style_id)
    error = layer.saveStyleToDatabase(STYLE_NAME, "UniRS change review: score, captions, verdicts",
                                      True, "")
    if error:
        raise RuntimeError(f"{layer.source()}: could not save the default style: {error}")


class ReviewLayerStyler(QgsProcessingLayerPostProcessorInterface):
    """Styles the review output when Processing loads it into the project."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def postProcessLayer(self, layer, context, feedback) -> None:  # noqa: N802 (QGIS hook)
        if isinstance(layer, QgsVectorLayer):
            style_review_layer(layer, self.threshold)
