"""What the commands print: results, notes and progress bars, as text or JSON."""

from __future__ import annotations

import json
from typing import Any, TextIO

from attrs import define
from tqdm import tqdm


def human(n: float) -> str:
    """A byte count for people: C{1.5 MiB}."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@define
class Output:
    """Where results, notes and progress bars go."""

    out: TextIO
    err: TextIO
    json_mode: bool
    progress: bool

    def result(self, data: Any, text: str, *, to_err: bool = False) -> None:
        stream = self.err if to_err else self.out
        print(json.dumps(data) if self.json_mode else text, file=stream)

    def note(self, text: str) -> None:
        print(f"metadisk: {text}", file=self.err)

    def bar(self, total: int, initial: int, desc: str) -> tqdm:
        # tqdm shows the speed and the time left; off when stderr is not a terminal.
        return tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=self.err,
            disable=None if self.progress else True,
            dynamic_ncols=True,
            leave=True,
        )
