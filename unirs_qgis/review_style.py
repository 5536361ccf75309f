"""How a change-review GeoPackage looks. Changed tiles (score at or above the review's threshold, the
one rule of unirs_engine/review/schema.py) are drawn as coloured outlines with a faint fill the
analyst can switch off, graduated by score in classes fitted to the run's own scores; unchanged
tiles only as a hairline. Captions of changed tiles are labels, marked ⚠ where the caption says
otherwise. The analyst's verdict is drawn on top (confirmed = dark outline, rejected = grey hatch).
The tile under review is highlighted by the Review tab itself (an outline on the canvas), never by
selection, which would fill it and hide the imagery.

The style is also saved into the GeoPackage as its default style, so the file opens styled in any
QGIS, and re-applied by a Processing layer post-processor when the algorithm's output is loaded.
"""

from __future__ import annotations

import os

from qgis.core import (QgsFeatureRequest, QgsFillSymbol, QgsGraduatedSymbolRenderer, QgsPalLayerSettings,
                       QgsProcessingLayerPostProcessorInterface, QgsProperty, QgsRendererRange,
                       QgsSymbolLayer, QgsTextBufferSettings, QgsTextFormat, QgsVectorLayer,
                       QgsVectorLayerSimpleLabeling)
from qgis.PyQt.QtGui import QColor

from unirs_engine.review.schema import CAPTION_CHANGED, CHANGED

from .layer_styles import save_default_style

STYLE_NAME = "unirs review"
MAX_SCORE = 2.0     # no score exceeds it (1 - cosine similarity: 2; the head's probability: 1)
FAINT_FILL = 45     # alpha of a changed tile's fill (0-255): the imagery stays readable through it
# Changed tiles: yellow -> orange -> red as the score grows.
CHANGED_COLOURS = ("#fecc5c", "#fd8d3c", "#e31a1c")
# Verdict drawn through data-defined overrides; NULL falls back to the range's own symbol.
REJECTED_FILL_STYLE = "CASE WHEN \"verdict\" = 'rejected' THEN 'b_diagonal' END"
REJECTED_FILL_COLOUR = "CASE WHEN \"verdict\" = 'rejected' THEN '#9e9e9e' END"
VERDICT_STROKE_COLOUR = ("CASE WHEN \"verdict\" = 'confirmed' THEN '#08306b' "
                         "WHEN \"verdict\" = 'rejected' THEN '#7f7f7f' END")
VERDICT_STROKE_WIDTH = "CASE WHEN \"verdict\" = 'confirmed' THEN 0.8 END"
VERDICT_STROKE_STYLE = "CASE WHEN \"verdict\" = 'rejected' THEN 'dash' END"
# Only changed tiles are labelled; ⚠ where the caption's own statement disagrees.
LABEL_EXPRESSION = (f"CASE WHEN \"{CHANGED}\" THEN concat(CASE WHEN \"{CAPTION_CHANGED}\" = 0 THEN '⚠ ' END, "
                    "wordwrap(\"caption\", 32)) END")


def _tile_symbol(colour: str, fill_alpha: int, width: float) -> QgsFillSymbol:
    symbol = QgsFillSymbol.createSimple({"outline_color": colour, "outline_width": str(width)})
    fill = QColor(colour)
    fill.setAlpha(fill_alpha)
    symbol.symbolLayer(0).setFillColor(fill)
    layer = symbol.symbolLayer(0)
    for key, expression in ((QgsSymbolLayer.PropertyFillStyle, REJECTED_FILL_STYLE),
                            (QgsSymbolLayer.PropertyFillColor, REJECTED_FILL_COLOUR),
                            (QgsSymbolLayer.PropertyStrokeColor, VERDICT_STROKE_COLOUR),
                            (QgsSymbolLayer.PropertyStrokeWidth, VERDICT_STROKE_WIDTH),
                            (QgsSymbolLayer.PropertyStrokeStyle, VERDICT_STROKE_STYLE)):
        layer.setDataDefinedProperty(key, QgsProperty.fromExpression(expression))
    return symbol


def class_breaks(threshold: float, scores: list[float]) -> list[float]:
    """Upper bounds of the changed classes: tertiles of the run's scores at or above the threshold
    (fewer classes when fewer distinct scores), else threshold x2, x4 when none is above yet."""
    above = sorted(s for s in scores if s >= threshold)
    if len(set(above)) < 2:
        return [threshold * 2, threshold * 4, MAX_SCORE] if threshold > 0 else [MAX_SCORE]
    cuts = [above[len(above) // 3], above[2 * len(above) // 3]]
    uppers = sorted({c for c in cuts if threshold < c < above[-1]})
    return uppers + [MAX_SCORE]


def score_renderer(threshold: float, scores: list[float], fill: bool = True) -> QgsGraduatedSymbolRenderer:
    """Below `threshold`: a grey hairline; above it: classes from class_breaks, each its colour."""
    ranges = [QgsRendererRange(0.0, threshold, _tile_symbol("#9e9e9e", 0, 0.1), f"< {threshold:.3g} (unchanged)")]
    uppers = class_breaks(threshold, scores)
    colours = CHANGED_COLOURS[-len(uppers):]   # one class: red; two: orange, red
    lower = threshold
    for upper, colour in zip(uppers, colours):
        label = f"{lower:.3g} – {upper:.3g}" if upper < MAX_SCORE else f"≥ {lower:.3g}"
        ranges.append(QgsRendererRange(lower, upper, _tile_symbol(colour, FAINT_FILL if fill else 0, 0.6), label))
        lower = upper
    return QgsGraduatedSymbolRenderer("score", ranges)


def review_threshold(layer: QgsVectorLayer) -> float:
    """The threshold `layer` is styled with (its first class's upper bound)."""
    renderer = layer.renderer()
    return renderer.ranges()[0].upperValue() if isinstance(renderer, QgsGraduatedSymbolRenderer) else 0.0


def set_fill(layer: QgsVectorLayer, fill: bool) -> None:
    """Show or hide the faint fill of the changed tiles (their outlines stay)."""
    renderer = layer.renderer()
    if not isinstance(renderer, QgsGraduatedSymbolRenderer):
        return
    for index, rng in enumerate(renderer.ranges()[1:], start=1):
        symbol = rng.symbol().clone()
        colour = symbol.symbolLayer(0).fillColor()
        colour.setAlpha(FAINT_FILL if fill else 0)
        symbol.symbolLayer(0).setFillColor(colour)
        renderer.updateRangeSymbol(index, symbol)
    layer.triggerRepaint()


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
    """Graduated outlines on "score" fitted to the layer's scores, caption labels for changed tiles."""
    request = QgsFeatureRequest().setFlags(QgsFeatureRequest.NoGeometry).setSubsetOfAttributes(["score"],
                                                                                              layer.fields())
    scores = [float(f["score"]) for f in layer.getFeatures(request)]
    layer.setRenderer(score_renderer(threshold, scores))
    layer.setLabeling(caption_labels())
    layer.setLabelsEnabled(True)
    layer.triggerRepaint()


def save_review_style(layer: QgsVectorLayer) -> None:
    save_default_style(layer, STYLE_NAME, "UniRS change review: score, captions, verdicts")


class ReviewLayerStyler(QgsProcessingLayerPostProcessorInterface):
    """Styles the review output when Processing loads it into the project, and names it `name`
    (default: review_layer_name)."""

    def __init__(self, threshold: float, name: str | None = None):
        super().__init__()
        self.threshold = threshold
        self.name = name

    def postProcessLayer(self, layer, context, feedback) -> None:  # noqa: N802 (QGIS hook)
        if isinstance(layer, QgsVectorLayer):
            layer.setName(self.name or review_layer_name(layer.source()))
            style_review_layer(layer, self.threshold)


def review_layer_name(source: str) -> str:
    """"UniRS review: <file name>", whether opened from the Review tab or loaded by Processing."""
    return f"UniRS review: {os.path.splitext(os.path.basename(source.split('|')[0]))[0]}"
