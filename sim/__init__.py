"""The world around the gateway, for tests and the demo: nodes, boards, networks, the platform."""
