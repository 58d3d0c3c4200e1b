"""The wire contract shared by the node and the gateway.

Pure code with no I/O: it runs unchanged on CPython and on MicroPython (>= 1.22).

- ``cbor``: a small, strict CBOR codec (RFC 8949); the node and the gateway both decode with it.
- ``senml``: SenML packs in CBOR (RFC 8428).
- ``cose``: COSE_Mac0 with HMAC 256/64 (RFC 9052, RFC 9053).
- ``coap``: the CoAP message codec the node needs (RFC 7252).
- ``const``: every number the wire uses, in one place.
"""
