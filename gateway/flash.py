"""Flash, provision and commission a node over USB serial (``reverbere node flash``)."""

CONFIG_PATH = "/node.json"
KEY_PATH = "/node.key"
STATUS_PATH = "/status.json"
