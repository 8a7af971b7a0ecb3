"""
Upload and download a large file through a running node; print the throughput
and the node's peak RSS in each phase. Memory must stay flat whatever the size.

    python bench/upload_memory.py [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import tempfile
import time
from pathlib import Path

from _node import Node, curl, peak_rss_mib, random_file, reset_peak, rss_mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    size = args.size_mib * 2**20
    with tempfile.TemporaryDirectory(prefix="metadisk-bench-") as tmp:
        work = Path(tmp)
        source = work / "source.bin"
        random_file(source, size)
        node = Node(
            work,
            f"""
[storage]
capacity = {4 * size + 2**30}
max_file_size = {size}
""",
        )
        try:
            pid = node.process.pid
            idle = rss_mib(pid)
            token = node.funded_token(10 * size)
            reset_peak(pid)
            seconds, out = curl(
                "-F", f"token={token}", "-F", f"file=@{source}", node.url + "/api/upload"
            )
            upload_peak = peak_rss_mib(pid)
            result = json.loads(out)
            print(f"upload   {size / seconds / 1e6:8.1f} MB/s   peak RSS {upload_peak:6.1f} MiB")

            # Let replication to the three local hosts finish before measuring the download.
            deadline = time.monotonic() + 600
            while node.get("/api/status")["sync"]["cloud_queue"]["count"]:
                if time.monotonic() > deadline:
                    raise SystemExit("replication did not finish in 10 minutes")
                time.sleep(0.2)

            target = work / "download.bin"
            reset_peak(pid)
            seconds, _ = curl(
                "-o",
                str(target),
                f"{node.url}/api/download/{result['filehash']}?key={result['key']}&token={token}",
            )
            download_peak = peak_rss_mib(pid)
            print(f"download {size / seconds / 1e6:8.1f} MB/s   peak RSS {download_peak:6.1f} MiB")
            same = filecmp.cmp(source, target, shallow=False)
            print(
                f"file size {args.size_mib} MiB; node RSS idle {idle:.1f} MiB; "
                f"bytes identical: {same}"
            )
            print(f"peak RSS over both transfers: {max(upload_peak, download_peak):.1f} MiB")
        finally:
            node.stop()


if __name__ == "__main__":
    main()
