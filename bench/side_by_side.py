"""
Two checkouts of the node side by side: both run at once, and take turns at
batches of the same small-file work, so that both see the same machine (this
VM's speed moves by tens of percent from one hour to the next, far more than
most changes). Prints each batch's files/s, then for each checkout the
median and best files/s and the median CPU seconds per 1,000 files, and the
ratio of the medians.

    python bench/side_by_side.py --before /tmp/base put        # 6 x 1,000 uploads, one client
    python bench/side_by_side.py --before /tmp/base get --clients 16 --files 2000 --rounds 4

--before names the other checkout (make one with `git worktree add /tmp/base <commit>`; it
runs with its own code and this checkout's benchmark helpers); --after defaults to this one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import transfer
from _node import ROOT, random_file, refresh


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("work", choices=("put", "get"), help="small uploads, or downloads")
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--after", type=Path, default=ROOT, help="this checkout by default")
    parser.add_argument("--files", type=int, default=1000, help="files of 10 KiB a batch")
    parser.add_argument("--rounds", type=int, default=6, help="batches each")
    parser.add_argument("--clients", type=int, default=1, help="curl processes at once")
    parser.add_argument("--database", help="a postgresql:// URL (default: SQLite)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="side-by-side-"))
    (work / "files").mkdir()
    files = [work / "files" / f"{i:05d}.bin" for i in range(args.files)]
    for path in files:
        random_file(path, 10 * 1024)
    nodes: dict[str, transfer.MetaDisk] = {}
    try:
        for name, tree in (("before", args.before), ("after", args.after)):
            node = transfer.MetaDisk(
                True, 2**40, 2**30, database=args.database, root=tree.resolve()
            )
            (work / name).mkdir()
            node.start(work / name)
            nodes[name] = node
        handles = {}
        if args.work == "get":
            for name, node in nodes.items():
                _, handles[name] = node.put_many(files, work, args.clients)
                node.settle()
        rates: dict[str, list[float]] = {name: [] for name in nodes}
        cpus: dict[str, list[float]] = {name: [] for name in nodes}
        sink = [Path(os.devnull)] * len(files)
        for round_ in range(args.rounds):
            order = list(nodes.items())
            for name, node in order if round_ % 2 == 0 else reversed(order):
                cpu = node.cpu_seconds()
                if args.work == "put":
                    for path in files:
                        refresh(path)  # new content: a convergent node skips what it has
                    seconds, _ = node.put_many(files, work, args.clients)
                else:
                    seconds = node.get_many(handles[name], sink, work, args.clients)
                cpus[name].append((node.cpu_seconds() - cpu) * 1000 / len(files))
                rates[name].append(len(files) / seconds)
            figures = ", ".join(f"{name} {rate[-1]:.0f}/s" for name, rate in rates.items())
            print(f"batch {round_ + 1}: {figures}")
    finally:
        for node in nodes.values():
            node.stop()
    for name, tree in (("before", args.before), ("after", args.after)):
        print(
            f"{name} ({tree}): median {statistics.median(rates[name]):.0f} files/s, best "
            f"{max(rates[name]):.0f}, CPU {statistics.median(cpus[name]):.2f} s per 1,000"
        )
    ratio = statistics.median(rates["after"]) / statistics.median(rates["before"])
    cpu_ratio = statistics.median(cpus["after"]) / statistics.median(cpus["before"])
    print(f"after / before: {ratio:.2f} files/s, CPU {cpu_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
