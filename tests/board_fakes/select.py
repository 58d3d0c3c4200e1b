"""A stand-in for MicroPython's ``select``: a poll that never sleeps (the test's clock moves
instead) and is ready when the fake socket's ``INBOX`` holds a datagram."""

import socket

POLLIN = 1


class poll:
    def __init__(self):
        self.objs = []

    def register(self, obj, mask=POLLIN):
        self.objs.append(obj)

    def poll(self, ms=-1):
        return [(self.objs[0], POLLIN)] if socket.INBOX and self.objs else []
