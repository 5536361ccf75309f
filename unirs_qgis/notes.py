"""Map notes of the dock's answers in the "UniRS notes" annotation layer, laid out so they never overlap.

One note per area asked about: a later answer about the same area is added to its note (a list, the
newest last). A note hangs from the top-left corner of the part of its area that was visible when it
was made (the whole-layer answers of Sequence land on screen), and moves down below any note it would
cover. Each note keeps the map scale it was made at as its reference scale, so its text grows and
shrinks with the map like the imagery: the layout holds at every zoom.

Annotation-layer custom properties are not saved on QGIS 3.22, so the notes' layout data (area, scale,
entries) is kept in a project entry.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict, dataclass, field

from qgis.core import (QgsAnnotationLayer, QgsAnnotationPointTextItem, QgsCoordinateReferenceSystem,
                       QgsCoordinateTransform, QgsMapSettings, QgsPointXY, QgsProject, QgsRectangle,
                       QgsRenderContext, QgsTextRenderer)
from qgis.PyQt.QtCore import QSize, Qt

from .answer_style import text_format
from .answers_store import add_to_group
from .settings import PROJECT_SCOPE

NOTES_LAYER_NAME = "UniRS notes"
NOTES_ENTRY = "notes"            # project entry (scope UniRS): JSON list of Note
NOTE_WIDTH, NOTE_LINES = 48, 3   # characters per line / answer lines of one entry
NOTE_ENTRIES = 4                 # entries shown in one note (the History has them all)
PAD_MM = 1.5                     # between a note and its area's edge, and between notes
SAME_AREA = 0.01                 # areas whose edges differ by less than this share of their size
DEFAULT_VIEW_MM = 150            # without a map view: the area as if shown 150 mm wide
MEASURE_PX_PER_MM = 10.0         # resolution of the text measurements


@dataclass
class Note:
    item: str                    # annotation item id
    area: list[float]            # the area asked about, in the notes layer's CRS
    anchor: list[float]          # the part of it that was visible: the note hangs from its top-left
    scale: float                 # map scale the note was made at (its reference scale)
    units_per_mm: float          # notes-CRS units per millimetre on paper at that scale
    entries: list[list[str]] = field(default_factory=list)   # [question, answer], oldest first
    earlier: int = 0             # entries no longer shown


def entry_text(question: str, answer: str | None) -> str:
    """One entry of a note: the question on one line, the answer wrapped below it after an arrow,
    both kept short (the full text is in the GeoPackage and the layer's history)."""
    question = " ".join(question.split())
    if len(question) > NOTE_WIDTH:
        question = question[:NOTE_WIDTH - 1] + "…"
    lines = textwrap.wrap(answer or "", NOTE_WIDTH - 2) or [""]
    if len(lines) > NOTE_LINES:
        lines = lines[:NOTE_LINES]
        lines[-1] = lines[-1][:NOTE_WIDTH - 3] + "…"
    return "\n".join([question, "→ " + lines[0], *("  " + line for line in lines[1:])])


def note_text(note: Note) -> str:
    parts = [entry_text(question, answer) for question, answer in note.entries]
    if note.earlier:
        parts.insert(0, f"(+{note.earlier} earlier: see the UniRS History)")
    return "\n".join(parts)


def notes_layer(project: QgsProject, crs: QgsCoordinateReferenceSystem) -> QgsAnnotationLayer:
    """The project's "UniRS notes" annotation layer, created in `crs` (in the UniRS group) when
    missing."""
    for layer in project.mapLayersByName(NOTES_LAYER_NAME):
        if isinstance(layer, QgsAnnotationLayer):
            return layer
    layer = QgsAnnotationLayer(NOTES_LAYER_NAME,
                               QgsAnnotationLayer.LayerOptions(project.transformContext()))
    layer.setCrs(crs)
    add_to_group(project, layer)
    return layer


def _load(project: QgsProject, layer: QgsAnnotationLayer) -> list[Note]:
    """The notes of the project whose item still exists (a user may delete one)."""
    raw, _ = project.readEntry(PROJECT_SCOPE, NOTES_ENTRY, "[]")
    try:
        notes = [Note(**note) for note in json.loads(raw or "[]")]
    except (ValueError, TypeError):
        notes = []   # unreadable layout data: start a new layout, the items are redrawn from now on
    items = layer.items()
    return [note for note in notes if note.item in items]


def _save(project: QgsProject, notes: list[Note]) -> None:
    project.writeEntry(PROJECT_SCOPE, NOTES_ENTRY, json.dumps([asdict(note) for note in notes]))


def _same_area(a: list[float], b: list[float]) -> bool:
    size = max(a[2] - a[0], a[3] - a[1], b[2] - b[0], b[3] - b[1])
    return all(abs(x - y) <= SAME_AREA * size for x, y in zip(a, b))


def _view_of(area: QgsRectangle, crs: QgsCoordinateReferenceSystem) -> QgsMapSettings:
    """A stand-in map view showing `area` DEFAULT_VIEW_MM wide, when no canvas is at hand."""
    view = QgsMapSettings()
    view.setDestinationCrs(crs)
    view.setOutputDpi(96)
    side = round(DEFAULT_VIEW_MM / 25.4 * 96)
    view.setOutputSize(QSize(side, side))
    view.setExtent(area)
    return view


def _in_layer_crs(rect: QgsRectangle, crs: QgsCoordinateReferenceSystem, layer: QgsAnnotationLayer,
                  project: QgsProject) -> QgsRectangle:
    if crs.isValid() and layer.crs().isValid() and crs != layer.crs():
        return QgsCoordinateTransform(crs, layer.crs(), project).transformBoundingBox(rect)
    return QgsRectangle(rect)


def _new_note(project: QgsProject, layer: QgsAnnotationLayer, area: QgsRectangle,
              view: QgsMapSettings | None) -> Note:
    """A note for `area` (in the layer's CRS), scaled and anchored for `view` (None: a stand-in)."""
    view = view or _view_of(area, layer.crs())
    extent = _in_layer_crs(view.visibleExtent(), view.destinationCrs(), layer, project)
    visible = area.intersect(extent)
    anchor = visible if not visible.isEmpty() else area
    units_per_mm = view.mapUnitsPerPixel() * view.outputDpi() / 25.4
    if view.visibleExtent().width() > 0:      # view units -> notes-CRS units
        units_per_mm *= extent.width() / view.visibleExtent().width()
    item = QgsAnnotationPointTextItem("", anchor.center())
    item.setFormat(text_format())
    item.setAlignment(Qt.AlignLeft)
    item.setUseSymbologyReferenceScale(True)   # the text scales with the map: the layout holds
    item.setSymbologyReferenceScale(view.scale())
    return Note(item=layer.addItem(item), area=_coords(area), anchor=_coords(anchor), scale=view.scale(),
                units_per_mm=units_per_mm)


def _coords(rect: QgsRectangle) -> list[float]:
    return [rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum()]


def text_size_mm(text: str) -> tuple[float, float]:
    """(width, height) in millimetres of `text` in the notes' format, its white buffer included."""
    context = QgsRenderContext()
    context.setScaleFactor(MEASURE_PX_PER_MM)
    fmt = text_format()
    lines = text.split("\n")
    buffer = 2 * fmt.buffer().size()
    width = QgsTextRenderer.textWidth(context, fmt, lines) / MEASURE_PX_PER_MM + buffer
    height = QgsTextRenderer.textHeight(context, fmt, lines, QgsTextRenderer.Point) / MEASURE_PX_PER_MM
    return width * 1.05, height + buffer   # 5 %: font hinting differs a little between resolutions


def note_box(note: Note, text: str, top: float) -> QgsRectangle:
    """The rectangle `note` covers (notes-CRS units) when its top edge is at `top`."""
    width, height = (mm * note.units_per_mm for mm in text_size_mm(text))
    left = note.anchor[0] + PAD_MM * note.units_per_mm
    return QgsRectangle(left, top - height, left + width, top)


def layout(layer: QgsAnnotationLayer, notes: list[Note]) -> dict[str, QgsRectangle]:
    """Place every note, oldest first: at the top-left of its anchor, moved down below the notes it
    would cover. Returns each note's box (notes-CRS units, at its reference scale)."""
    boxes: dict[str, QgsRectangle] = {}
    for note in notes:
        text = note_text(note)
        pad = PAD_MM * note.units_per_mm
        top = note.anchor[3] - pad
        box = note_box(note, text, top)
        while hits := [b for b in boxes.values() if b.intersects(box)]:
            top = min(b.yMinimum() for b in hits) - pad
            box = note_box(note, text, top)
        boxes[note.item] = box
        fmt = text_format()   # kept: buffer() is a reference into it
        buffer = fmt.buffer().size() * note.units_per_mm
        item = layer.item(note.item)               # edited in place: the layer owns it
        item.setText(text)
        item.setPoint(QgsPointXY(box.xMinimum() + buffer, box.yMinimum() + buffer))  # text's bottom-left
    layer.triggerRepaint()
    return boxes


def add_to_note(project: QgsProject, area: QgsRectangle, crs: QgsCoordinateReferenceSystem,
                question: str, answer: str | None,
                view: QgsMapSettings | None = None) -> tuple[QgsAnnotationLayer, str]:
    """Show an answer about `area` (in `crs`): in the note of that area, else in a new note anchored
    in the part of `area` visible in `view` (the canvas's map settings; None: the whole area).
    Returns the notes layer and the note's item id."""
    layer = notes_layer(project, crs)
    area = _in_layer_crs(area, crs, layer, project)
    notes = _load(project, layer)
    note = next((n for n in notes if _same_area(n.area, _coords(area))), None)
    if note is None:
        note = _new_note(project, layer, area, view)
        notes.append(note)
    note.entries.append([question, answer or ""])
    if len(note.entries) > NOTE_ENTRIES:
        note.earlier += len(note.entries) - NOTE_ENTRIES
        note.entries = note.entries[-NOTE_ENTRIES:]
    layout(layer, notes)
    _save(project, notes)
    return layer, note.item
