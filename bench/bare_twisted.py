"""
The platform's ceiling for bench/transfer.py: a twisted.web server that does
the least a durable file server must, and nothing else. A PUT's body (held
by twisted.web: in memory, or in a temporary file past 100 KB) is written to
its file and fsynced before the 201; a GET is twisted.web's static.File. No
encryption, no database, no accounts, no hosts, no log. What the node spends
beyond this is the node's; what this spends beyond rclone is the platform's
(CPython, the reactor, twisted.web's HTTP) and the fsync's.

    python bench/bare_twisted.py FOLDER     # prints the port it listens on (loopback)
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from twisted.web.static import File


class DurableFolder(File):
    """GET as static.File; PUT writes the body to the named file, durably."""

    def getChild(self, name: bytes, request: Request) -> Resource:
        if request.method == b"PUT":  # static.File finds no child that is not there yet
            return self.createSimilarFile(os.path.join(self.path, name.decode()))
        return super().getChild(name, request)

    def render_PUT(self, request: Request) -> bytes:
        name = Path(self.path).name
        if not name or name.startswith("."):
            request.setResponseCode(400)
            return b""
        with open(self.path, "wb") as f:
            shutil.copyfileobj(request.content, f)
            f.flush()
            os.fsync(f.fileno())
        request.setResponseCode(201)
        return name.encode()  # a body, as rclone's "Created": the benchmark counts answers


def main() -> None:
    folder = Path(sys.argv[1])
    root: Resource = DurableFolder(str(folder))
    site = Site(root)
    site.log = lambda request: None  # type: ignore[method-assign]  # no access log, as rclone
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    print(port.getHost().port, flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
