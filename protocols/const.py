"""Every number on the wire, in one place, each with the document it comes from.

Plain integers (not ``micropython.const``) because the gateway imports these names too;
MicroPython interns small ints, so they cost nothing per use.
"""

# --- CoAP (RFC 7252) ---------------------------------------------------------------------------
# Message types, Section 3.
CON = 0
NON = 1
ACK = 2
RST = 3

# Codes, Section 12.1: class << 5 | detail.
EMPTY = 0x00
POST = 0x02
CHANGED = 0x44  # 2.04
BAD_REQUEST = 0x80  # 4.00
UNAUTHORIZED = 0x81  # 4.01
NOT_FOUND = 0x84  # 4.04
METHOD_NOT_ALLOWED = 0x85  # 4.05
REQUEST_ENTITY_TOO_LARGE = 0x8D  # 4.13
UNSUPPORTED_CONTENT_FORMAT = 0x8F  # 4.15
INTERNAL_SERVER_ERROR = 0xA0  # 5.00
SERVICE_UNAVAILABLE = 0xA3  # 5.03

# Option numbers, Section 12.2.
URI_HOST = 3
URI_PORT = 7
URI_PATH = 11
CONTENT_FORMAT = 12
MAX_AGE = 14
URI_QUERY = 15
SIZE1 = 60

# Transmission parameters, Section 4.8 (seconds).
ACK_TIMEOUT = 2
ACK_RANDOM_FACTOR = 1.5
MAX_RETRANSMIT = 4
DEFAULT_PORT = 5683

# Content-Formats (IANA CoAP Content-Formats registry).
CF_COSE_MAC0 = 17  # application/cose; cose-type="cose-mac0" (RFC 9052 Section 2)
CF_CBOR = 60  # application/cbor
CF_SENML_CBOR = 112  # application/senml+cbor (RFC 8428 Section 12.3)

# The resource the node posts its readings to.
READINGS_PATH = "r"

# --- SenML (RFC 8428 Section 6, Table 4: CBOR labels) -----------------------------------------
BVER = -1
BN = -2
BT = -3
BU = -4
BV = -5
BS = -6
N = 0
U = 1
V = 2
VS = 3
VB = 4
S = 5
T = 6
UT = 7
VD = 8

# Times below 2**28 are relative to "now" (RFC 8428 Section 4.5.3).
SENML_RELATIVE_LIMIT = 1 << 28

# Channels a node may send: (name, SenML unit) (RFC 8428 Section 12.1, RFC 8798). The one list:
# the gateway refuses (4.00) a pack with any other channel, the node's config.json accepts
# these (but "drop", which the node makes itself), and the node stores a reading's channel on
# flash as its index here (firmware/store.py): add new channels at the end, never reorder.
CHANNEL_UNITS = (
    ("p", "W"),  # active power
    ("e", "Wh"),  # energy counter, sent as a sum ("s")
    ("t", "Cel"),  # temperature
    ("lux", "lx"),  # illuminance
    ("bat", "%EL"),  # battery, percent of remaining energy level
    ("rssi", "dBW"),  # radio signal strength
    ("drop", "1"),  # readings the node had to drop (buffer full), a counter sent as a sum
    ("fw", "1"),  # the firmware version the node runs, confirmed (docs/ota.md), once per boot
    ("fwt", "1"),  # the version it runs on trial, not yet confirmed
    ("fwx", "1"),  # the version it gave up (rolled back, refused or failed)
)
CHANNEL_NAMES = tuple(c[0] for c in CHANNEL_UNITS)
CHANNELS = dict(CHANNEL_UNITS)  # name -> unit
# Channels whose readings are counters, carried in the SenML sum field.
SUM_CHANNELS = ("e", "drop")

# The physically possible values of each channel, (name, lowest, highest), in its unit above:
# the gateway refuses (4.00) a pack with a value outside them (docs/protocol.md says why each
# bound). Generous on purpose: they catch a broken sensor or a forged number (bat = 1e15), not
# an unusual reading.
CHANNEL_RANGES = (
    ("p", -10e6, 10e6),  # W: 10 MW either way (a building may export), far above any node
    ("e", 0, 1e12),  # Wh: a counter, never negative; 1 TWh is centuries of a large building
    ("t", -100, 200),  # Cel: below the coldest air ever measured, above a lamp head's electronics
    ("lux", 0, 200000),  # lx: direct summer sunlight is about 120,000
    ("bat", 0, 100),  # %EL: a percentage
    ("rssi", -200, 50),  # radio level, dBm as nodes send it (-100 to 0) or dBW, with room
    ("drop", 0, 4294967295),  # a counter, never negative; 2^32 - 1
    ("fw", 0, 4294967295),  # versions: manifest versions are unsigned 32-bit
    ("fwt", 0, 4294967295),
    ("fwx", 0, 4294967295),
)
CHANNEL_LIMITS = {c[0]: (c[1], c[2]) for c in CHANNEL_RANGES}  # name -> (lowest, highest)

# --- COSE (RFC 9052) ------------------------------------------------------------------------
COSE_MAC0_TAG = 17  # Section 2, CBOR tag of a COSE_Mac0
HDR_ALG = 1  # Section 3.1, header parameter "alg"
HDR_KID = 4  # "kid"
HDR_PARTIAL_IV = 6  # "Partial IV"
ALG_HMAC_256_64 = 4  # RFC 9053 Section 3.1, HMAC w/ SHA-256 truncated to 64 bits
MAC_LEN = 8

# --- The 2.04 response payload: a CBOR map (docs/protocol.md) --------------------------------
RESP_TIME = "t"  # the gateway's time, integer Unix seconds
RESP_CONFIG = "c"  # a map of settings for this node, e.g. {"interval": 60}
RESP_UPDATE = "u"  # the version waiting for this node (protocols/manifest.py, docs/ota.md)
