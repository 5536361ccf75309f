"""A layer's style saved into its own GeoPackage as the default style, so the file opens styled in any
QGIS (answers and reviews alike)."""

from __future__ import annotations

from osgeo import ogr
from qgis.core import QgsVectorLayer


def save_default_style(layer: QgsVectorLayer, name: str, description: str) -> None:
    """Store the layer's style in its GeoPackage (layer_styles) as the table's default style `name`."""
    # Saving over a style of the same name makes QGIS 3.22 ask in a modal dialog (a hang in Processing
    # and qgis_process): remove ours first (listing a file without styles logs a warning: look first).
    ds = ogr.Open(layer.source().split("|", 1)[0])
    if ds is not None and ds.GetLayerByName("layer_styles") is not None:
        related, ids, names, _, _ = layer.listStylesInDatabase()   # this table's styles come first
        for style_id, style_name in zip(ids[:related], names[:related]):
            if style_name == name:
                layer.deleteStyleFromDatabase(style_id)
    ds = None
    error = layer.saveStyleToDatabase(name, description, True, "")
    if error:
        raise OSError(f"{layer.source()}: could not save the default style: {error}")
