"""
Work that runs again and again: the one periodic service every loop of the
node is (reading and publishing the chain, repair, the cloud queue, the
meters), and the one backoff every retried thing waits by.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.application import service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger


def backoff(attempts: int, first: float = 2.0, longest: float = 300.0) -> float:
    """Seconds to wait after C{attempts} failures in a row: doubling from C{first}, capped."""
    return min(longest, first * 2.0 ** min(max(attempts - 1, 0), 30))


class Periodic(service.Service):
    """
    Calls C{work} every C{interval} seconds, one round at a time (the next is
    timed from the end of the last). A round never ends the loop by failing:
    its error is logged and kept in L{error} for the status (None after a
    round that succeeded); an error of one of the C{expected} kinds is logged
    as a line, anything else with its traceback. Stopping cancels the round
    in flight (L{LoopingCall.stop} alone would wait for it).
    """

    log = Logger()

    def __init__(
        self,
        name: str,
        work: Callable[[], Awaitable[Any]],
        interval: float,
        clock: IReactorTime,
        *,
        now: bool = True,
        expected: tuple[type[Exception], ...] = (),
    ) -> None:
        self.setName(name)
        self.error: str | None = None
        self.interval = interval
        self._work = work
        self._now = now
        self._expected = expected
        self._call = LoopingCall(self.run)
        self._call.clock = clock
        self._round: Deferred[None] | None = None
        self._again = False  # poked during a round: another once it ends

    @property
    def busy(self) -> bool:
        """A round is in flight."""
        return self._round is not None

    def startService(self) -> None:
        super().startService()
        self._call.start(self.interval, now=self._now)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._again = False
        if self._call.running:
            self._call.stop()
        if self._round is not None:
            self._round.cancel()
        return succeed(None)

    def poke(self) -> None:
        """
        The next round now rather than when it is due (with a round in flight:
        as soon as it ends, since it may have looked before what prompted the
        poke); nothing while the loop is stopped. Rounds still never overlap:
        the loop runs the round, and times the next one from its end.
        """
        if not self._call.running:
            return
        if self._round is not None:
            self._again = True
            return
        self._call.stop()
        self._call.start(self.interval, now=True)

    def run(self) -> Deferred[None]:
        """One round now; it never fails."""
        round_ = Deferred.fromCoroutine(self._guarded())
        self._round = None if round_.called else round_
        return round_

    async def _guarded(self) -> None:
        try:
            await self._work()
        except CancelledError:
            return  # stopping
        except self._expected as e:
            self.error = str(e)
            self.log.warn("{name}: {e}", name=self.name, e=self.error)
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
            self.log.failure("{name} failed", name=self.name)
        else:
            self.error = None
        finally:
            self._round = None
            if self._again:
                self._again = False
                # Once the loop has timed its next round from this one's end.
                self._call.clock.callLater(0, self.poke)
