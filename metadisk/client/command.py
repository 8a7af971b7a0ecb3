"""
The arguments of the C{metadisk} command, and L{run}: parse them, call the
command, turn its L{CLIError} into one line on stderr and an exit code.

    metadisk [--node URL] [--token TOKEN] [--json] COMMAND ...

    upload FILE [--retries N]             upload a file; prints its filehash and key; a file
                                          from 8 MiB up goes through tus and resumes if cut
    download FILEHASH [--key KEY] [-o OUT]  download (and verify) a file; resumes if cut
    find FILEHASH                         where a file is stored
    status                                the node's bandwidth, storage, queues, chain
    token new | balance [TOKEN] | redeem PROMOCODE | prices

Global options are accepted before or after the command. The token may come
from METADISK_TOKEN, the node from METADISK_NODE.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, BinaryIO, NoReturn, TextIO

from metadisk import __version__
from metadisk.client.accounts import token_command
from metadisk.client.download import download
from metadisk.client.errors import EXIT_INTERRUPTED, EXIT_USAGE, CLIError
from metadisk.client.lookup import find, status
from metadisk.client.node import NodeClient
from metadisk.client.output import Output
from metadisk.client.resumable import UploadState
from metadisk.client.upload import upload

DEFAULT_NODE = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 5


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see {self.prog} --help)", EXIT_USAGE)


def _global_options() -> argparse.ArgumentParser:
    # SUPPRESS: an option given before the command is not reset by the command's parser.
    common = _Parser(add_help=False)
    options = common.add_argument_group("global options")
    options.add_argument(
        "--node", default=argparse.SUPPRESS, help=f"the node's URL (default {DEFAULT_NODE})"
    )
    options.add_argument(
        "--token", default=argparse.SUPPRESS, help="access token (default: $METADISK_TOKEN)"
    )
    options.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
    )
    options.add_argument(
        "--no-progress",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no progress bars (they are only shown on a terminal)",
    )
    options.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS,
        help=f"seconds to wait on the network (default {DEFAULT_TIMEOUT:g})",
    )
    return common


def parser() -> argparse.ArgumentParser:
    common = _global_options()
    main_parser = _Parser(
        prog="metadisk",
        parents=[common],
        description="The MetaDisk command-line client.",
        epilog="Exit codes: 0 ok, 1 refused or failed, 2 usage, 3 node unreachable,"
        " 4 verification failed, 130 interrupted.",
    )
    main_parser.add_argument("--version", action="version", version=f"metadisk {__version__}")
    commands = main_parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_: str, subs: Any = commands) -> argparse.ArgumentParser:
        return subs.add_parser(name, parents=[common], help=help_, description=help_)

    up = command("upload", "upload a file; prints its filehash and key; resumes if cut")
    up.add_argument("file", metavar="FILE")
    up.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        help=f"resumes in a row after cuts without progress (default {DEFAULT_RETRIES});"
        " files from 8 MiB up",
    )
    down = command("download", "download a file, verify it, resume if cut")
    down.add_argument("filehash", metavar="FILEHASH")
    down.add_argument("--key", help="the file's key (without it: the encrypted blob)")
    down.add_argument("-o", "--output", metavar="OUT", help="file or folder; - for stdout")
    down.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    down.add_argument(
        "--retries",
        type=int,
        default=DEFAULT_RETRIES,
        help=f"resumes in a row after cuts without progress (default {DEFAULT_RETRIES})",
    )
    found = command("find", "where a file is stored")
    found.add_argument("filehash", metavar="FILEHASH")
    command("status", "the node's bandwidth, storage, queues and chain")
    token = command("token", "access tokens: new, balance, redeem, prices")
    actions = token.add_subparsers(dest="action", metavar="ACTION", required=True)
    command("new", "create a token", actions)
    balance = command("balance", "a token's credit, in bytes", actions)
    balance.add_argument("balance_token", metavar="TOKEN", nargs="?")
    redeem = command("redeem", "add a promocode's credit to the token", actions)
    redeem.add_argument("promocode", metavar="PROMOCODE")
    command("prices", "the node's price list", actions)
    return main_parser


def run(
    argv: Sequence[str],
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run one command; return its exit code. The streams are for tests."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    environ = os.environ if environ is None else environ
    try:
        args = parser().parse_args(list(argv))
    except CLIError as e:
        print(f"metadisk: {e}", file=stderr)
        return e.code
    except SystemExit as e:  # --help, --version
        return int(e.code or 0)
    output = Output(
        stdout, stderr, getattr(args, "json", False), not getattr(args, "no_progress", False)
    )
    try:
        return _dispatch(args, output, environ)
    except CLIError as e:
        if output.json_mode:
            error = {"error": str(e), "exit_code": e.code}
            if e.details is not None:
                error["node"] = e.details
            print(json.dumps(error), file=stdout)
        print(f"metadisk: {e}", file=stderr)
        return e.code
    except KeyboardInterrupt:
        print("metadisk: interrupted", file=stderr)
        return EXIT_INTERRUPTED


def _dispatch(args: argparse.Namespace, output: Output, environ: Mapping[str, str]) -> int:
    url = getattr(args, "node", None) or environ.get("METADISK_NODE") or DEFAULT_NODE
    client = NodeClient(url, getattr(args, "timeout", DEFAULT_TIMEOUT))
    token = getattr(args, "token", None) or environ.get("METADISK_TOKEN") or None
    handlers: dict[str, Callable[[], int]] = {
        "upload": lambda: upload(
            client, output, args.file, token, args.retries, UploadState.default(environ)
        ),
        "download": lambda: download(client, output, args, token, _binary(output.out)),
        "find": lambda: find(client, output, args),
        "status": lambda: status(client, output),
        "token": lambda: token_command(client, output, args, token),
    }
    return handlers[args.command]()


def _binary(stream: TextIO) -> BinaryIO:
    binary = getattr(stream, "buffer", None)
    if binary is None:
        raise CLIError("download: standard output cannot take bytes here", EXIT_USAGE)
    return binary


def main() -> None:
    """The C{metadisk} console script."""
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
