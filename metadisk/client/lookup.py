"""C{metadisk find} and C{metadisk status}: one JSON call each, printed."""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Mapping

from metadisk.client.errors import EXIT_OK
from metadisk.client.node import NodeClient, filehash_argument
from metadisk.client.output import Output, human


def find(client: NodeClient, output: Output, args: argparse.Namespace) -> int:
    filehash = filehash_argument(args.filehash, "find")
    record = client.call("find", "GET", f"/api/find/{filehash}")
    when = datetime.datetime.fromtimestamp(int(record["datetime"]), datetime.UTC)
    lines = [
        f"filehash  {record['filehash']}",
        f"filename  {record['filename']}",
        f"size      {record['filesize']} bytes ({human(record['filesize'])})",
        f"uploaded  {when:%Y-%m-%d %H:%M:%S} UTC",
    ]
    uploads = record.get("uploads") or []
    if not uploads:
        lines.append("hosts     (none yet)")
    for i, upload_ in enumerate(uploads):
        label = "hosts" if i == 0 else ""
        lines.append(f"{label:<9} {upload_['host_name']}  {upload_['url']}")
    output.result(record, "\n".join(lines))
    return EXIT_OK


def _pair(figures: Mapping[str, int], rate: bool = False) -> str:
    unit = "/s" if rate else ""
    return ", ".join(
        f"{direction} {human(figures.get(direction, 0))}{unit}"
        for direction in ("incoming", "outgoing")
    )


def _limits(figures: Mapping[str, int], rate: bool = False) -> str:
    unit = "/s" if rate else ""
    return ", ".join(
        f"{direction} {human(n) + unit if (n := figures.get(direction, 0)) else 'none'}"
        for direction in ("incoming", "outgoing")
    )


def status(client: NodeClient, output: Output) -> int:
    data = client.call("status", "GET", "/api/status")
    bandwidth, storage, sync = data["bandwidth"], data["storage"], data["sync"]
    chain = data.get("florincoin") or data.get("datacoin") or {}
    lines = [
        f"node              {client.url}",
        f"storage           {human(storage['used'])} used of {human(storage['capacity'])}"
        f" (files up to {human(storage['max_file_size'])})",
        f"transferred       {_pair(bandwidth['total'])}",
        f"this month        {_pair(bandwidth['current'])}",
        f"monthly limits    {_limits(bandwidth['limits'])}",
        f"rate              {_pair(bandwidth['rate'], rate=True)}",
        f"rate limits       {_limits(bandwidth['rate_limits'], rate=True)}",
    ]
    for queue in ("cloud_queue", "blockchain_queue"):
        q = sync.get(queue, {"count": 0, "size": 0})
        lines.append(f"{queue.replace('_', ' '):<17} {q['count']} files ({human(q['size'])})")
    lines.append(
        f"chain             {chain.get('coin', 'none')}, block {chain.get('block', 0)},"
        f" balance {chain.get('balance', 0)}, address {chain.get('address') or '-'}"
    )
    output.result(data, "\n".join(lines))
    return EXIT_OK
