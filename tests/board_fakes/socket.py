"""A stand-in for MicroPython's ``socket`` module (UDP only), tied to the fake ``network``.

``getaddrinfo`` answers a numeric address at once (as lwIP does) and a name from ``DNS``
(name -> address) only while the station is joined; else it raises ``OSError`` like a failed
lookup, and counts in ``LOOKUPS``. A datagram sent while the station is not joined raises
``OSError`` (no route). ``GATEWAY(data)`` (set by the test) answers what was sent: its
reply, if any, waits in ``INBOX`` for ``recv``.
"""

import network

AF_INET = 2
SOCK_DGRAM = 2

DNS = {}
LOOKUPS = []
SENT = []
INBOX = []
GATEWAY = [None]


def reset():
    DNS.clear()
    for x in (LOOKUPS, SENT, INBOX):
        x.clear()
    GATEWAY[0] = None


def getaddrinfo(host, port):
    LOOKUPS.append(host)
    if host.replace(".", "").isdigit():
        addr = host
    elif network.CONNECTED and host in DNS:
        addr = DNS[host]
    else:
        raise OSError(-2)  # lwIP: the name did not resolve
    return [(AF_INET, SOCK_DGRAM, 17, "", (addr, port))]


class socket:
    def __init__(self, family, kind):
        self.family = family

    def sendto(self, data, addr):
        if not network.CONNECTED:
            raise OSError(113)  # EHOSTUNREACH
        SENT.append((bytes(data), addr))
        if GATEWAY[0]:
            reply = GATEWAY[0](data)
            if reply:
                INBOX.append(reply)

    def recv(self, n):
        return INBOX.pop(0)
