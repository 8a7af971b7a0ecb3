"""
What holds a request's socket paused while an upload is received: several
reasons at once, and reading resumes only when the last lets go.
"""

from __future__ import annotations

from typing import Any

from attrs import define


@define
class SocketHolds:
    """
    The reasons that hold a request's socket paused (admission steps, the
    bandwidth limit, a resumable upload's creation): it reads again once the
    last one lets go.
    """

    _request: Any
    _count: int = 0

    def pause(self) -> None:
        self._count += 1
        if self._count == 1 and (transport := self._transport()) is not None:
            transport.pauseProducing()

    def resume(self) -> None:
        self._count -= 1
        if self._count == 0 and (transport := self._transport()) is not None:
            transport.resumeProducing()

    def _transport(self) -> Any:
        # The request lets go of its channel once it is finished.
        return getattr(getattr(self._request, "channel", None), "transport", None)
