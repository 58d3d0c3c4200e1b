"""Ingest: bytes in, verified readings out.

The CoAP server context (``coap``), the ``/r`` resource that checks, verifies and validates a
node's pack (``resource``), and the node registry it checks against (``registry``).
Imports nothing: each module is imported by name.
"""
