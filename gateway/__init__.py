"""Réverbère gateway, the service on the Pi: CoAP ingest, SQLite, detect, summarise, sync."""

__version__ = "0.1.0"
