"""Firmware updates over the air, the gateway's side (issue 17, docs/ota.md): what waits for
which node (``updates``) and the block-wise resource the nodes fetch it from (``resource``)."""
