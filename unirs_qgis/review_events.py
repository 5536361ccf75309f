"""Where a change review that ran in Processing tells the dock it ended: `review_events.ended` fires on
the main thread with the review's layer URI and whether it finished, was cancelled or stopped.

Processing reports a cancelled algorithm as a failure and loads none of its outputs; a cancelled
review still holds every finished tile, so the Review tab loads it from here and says how to resume.
"""

from __future__ import annotations

from qgis.PyQt.QtCore import QObject, pyqtSignal

FINISHED, INTERRUPTED = "finished", "interrupted"


class ReviewEvents(QObject):
    ended = pyqtSignal(str, str, str)   # layer uri, FINISHED | INTERRUPTED, a one-line message


review_events = ReviewEvents()   # created on the main thread with the plugin: emits from any thread queue
