"""A table model over the answer records stored on a layer (write_back.answers_of), newest first."""

from __future__ import annotations

from qgis.PyQt.QtCore import QAbstractTableModel, QDateTime, QModelIndex, Qt

COLUMNS = ("When", "Question", "Answer")


def _when(record: dict) -> str:
    stamp = QDateTime.fromString(record.get("created", ""), Qt.ISODate)
    return stamp.toLocalTime().toString("yyyy-MM-dd hh:mm") if stamp.isValid() else ""


def _tooltip(record: dict) -> str:
    lines = [f"Q: {record.get('question', '')}", f"A: {record.get('answer', '')}"]
    if record.get("clue"):
        lines.append(f"Clue: {record['clue']}")
    lines.append(f"{record.get('task', '')} · {record.get('model', '')} · {record.get('device', '')}")
    return "\n".join(lines)


class AnswerHistoryModel(QAbstractTableModel):
    """Rows = answer records (dicts as written by write_back.record_answer), newest first."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._records: list[dict] = []

    def set_records(self, records: list[dict]) -> None:
        self.beginResetModel()
        self._records = list(reversed(records))
        self.endResetModel()

    def record(self, row: int) -> dict:
        return self._records[row]

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802 (Qt API)
        return 0 if parent.isValid() else len(self._records)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(COLUMNS)

    def data(self, index: QModelIndex, role: int = Qt.DisplayRole):
        if not index.isValid():
            return None
        record = self._records[index.row()]
        if role == Qt.DisplayRole:
            return (_when(record), record.get("question", ""), record.get("answer", ""))[index.column()]
        if role == Qt.ToolTipRole:
            return _tooltip(record)
        return None

    def headerData(self, section: int, orientation, role: int = Qt.DisplayRole):  # noqa: N802
        if orientation == Qt.Horizontal and role == Qt.DisplayRole:
            return COLUMNS[section]
        return None
