"""The engine behind a small client: a local worker process speaking JSON lines, or in-process.

protocol.py (the wire format), server.py (`python -m unirs_engine.worker`), client.py (what the
QGIS plugin uses; importing it does not import torch).
"""
