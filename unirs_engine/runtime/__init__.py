"""The engine's runtime on a user's machine: which Python runs the engine, and the managed engine
environment the plugin builds for it. Imports no torch, no QGIS and no Qt (QGIS's own Python runs it)."""
