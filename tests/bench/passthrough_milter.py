"""The cheapest useful pymilter: reads every header and body chunk, answers
nothing until end of message, accepts. The benchmark's reference point for
what the milter protocol itself costs.

    python tests/bench/passthrough_milter.py unix:/path/to.sock
"""

from __future__ import annotations

import os
import sys

import Milter


@Milter.header_leading_space
class Passthrough(Milter.Base):
    @Milter.noreply
    def connect(self, hostname, family, hostaddr):
        return Milter.CONTINUE

    @Milter.noreply
    def envfrom(self, mail_from, *params):
        self.size = 0
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name, value):
        self.size += len(name) + len(value)
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk):
        self.size += len(chunk)
        return Milter.CONTINUE

    def eom(self):
        self.addheader("X-Passthrough", f" {self.size}")
        return Milter.ACCEPT


if __name__ == "__main__":
    socket = sys.argv[1]
    os.umask(0o000)  # the postfix user must reach the socket
    Milter.factory = Passthrough
    Milter.runmilter("passthrough", socket, timeout=600)
