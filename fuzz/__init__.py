"""Fuzz targets (docs/gateway.md, "Fuzzing"): plain Python, importable without atheris."""
