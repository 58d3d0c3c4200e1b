"""Réverbère gateway: the service on the Pi.

CoAP ingest -> verify -> store (SQLite) -> detect -> summarise -> sync.
"""

__version__ = "0.1.0"
