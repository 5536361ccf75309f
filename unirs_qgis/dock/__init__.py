"""The UniRS dock widget (widget.py), its background task (task.py), the per-layer answer history
model (history.py) and the settings dialog (settings_dialog.py)."""
