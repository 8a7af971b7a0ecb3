"""
Open-file descriptors. At start the node raises its soft limit to the hard
limit; from then on a new connection is refused before the connections take
the descriptors its database, host copies, processes and chain need.
"""

from __future__ import annotations

import enum
import math
import os
import resource
from collections.abc import Callable

from attrs import define, field
from twisted.internet.interfaces import IReactorTime

# Descriptors kept for the node's own work: SQLite and its WAL, host copies, processes' pipes,
# the chain's RPC, log files. A connection never takes one of these.
RESERVE = 64
# Counting is a listing of /proc/self/fd, linear in the descriptors open (0.6 ms for 1,000):
# done at most this often (seconds), not for every connection of a flood.
RECOUNT_INTERVAL = 0.5


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and hard != resource.RLIM_INFINITY:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # a system that caps it lower: the soft limit stays
    return soft if soft != resource.RLIM_INFINITY else 2**31  # unlimited: as good as


def open_descriptors() -> int | None:
    """
    How many descriptors this process has open; None where it cannot tell
    (no /proc). Fails with OSError (EMFILE) when there is not one to spare.
    """
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the listing's own
    except FileNotFoundError:
        return None


class Admission(enum.Enum):
    ADMIT = "admit"
    BUSY = "busy"  # refused with an answer: the socket is open already, answering costs nothing
    DROP = "drop"  # closed at once: the reserve itself is in use


@define
class DescriptorBudget:
    """
    Whether the process can afford another connection. Each connection is
    charged two descriptors: its socket and the file an upload or download
    opens. What else is open is counted (L{open_descriptors}) at most every
    L{RECOUNT_INTERVAL} seconds, and the connections opened and closed
    since are added. Where nothing can be counted, only the connections are.
    """

    _clock: IReactorTime
    limit: int
    reserve: int = RESERVE
    _count: Callable[[], int | None] = open_descriptors
    connections: int = field(init=False, default=0)
    _counted: int = field(init=False, default=0)  # descriptors open at the last count…
    _since: int = field(init=False, default=0)  # …plus connections opened since, less closed
    _counted_at: float = field(init=False, default=-math.inf)

    def opened(self) -> None:
        self.connections += 1
        self._since += 1

    def closed(self) -> None:
        self.connections -= 1
        self._since -= 1

    def admission(self) -> Admission:
        """What to do with a connection just accepted (its socket is open, not yet L{opened})."""
        free = self.limit - self._open()
        if free - self.connections - 1 >= self.reserve:  # room for every connection's file too
            return Admission.ADMIT
        if free >= self.reserve:
            return Admission.BUSY
        return Admission.DROP

    def _open(self) -> int:
        now = self._clock.seconds()
        if now - self._counted_at >= RECOUNT_INTERVAL:
            try:
                counted = self._count()
            except OSError:
                counted = self.limit  # not a descriptor left even to look
            self._counted = counted if counted is not None else self.connections
            self._since = 0
            self._counted_at = now
        return self._counted + self._since
