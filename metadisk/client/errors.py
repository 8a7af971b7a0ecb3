"""
What goes wrong, and how the command says so: the exit codes, L{CLIError}
(one line on stderr and an exit code), and the node's JSON errors as that
line, with a sentence for each of its codes.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1  # the node refused, or something else went wrong
EXIT_USAGE = 2  # bad arguments (argparse's convention)
EXIT_UNREACHABLE = 3  # no connection to the node, or it was lost for good
EXIT_UNVERIFIED = 4  # a download did not verify
EXIT_INTERRUPTED = 130  # Ctrl-C

# What a failed HEAD means: it has no body to say so.
_HEAD_ERRORS = {
    400: "invalid-filehash",
    401: "token-required",
    404: "file-not-found",
    429: "too-many-requests",
    503: "unavailable",  # database-unavailable or node-busy: a HEAD is no transfer
}
# What each error code of the node means here, after the code itself. Every code the
# node's OpenAPI document names has one (tests/test_error_messages.py), as on the web page.
MESSAGES = {
    # Any route.
    "too-many-requests": "too many unknown tokens from this address",
    "database-unavailable": "the node cannot reach its database; try again in a moment",
    "internal-error": "the node failed unexpectedly (its log says why); try again later",
    "not-found": "the node has no such route; is --node a MetaDisk node?",
    "method-not-allowed": "the node does not take this request here; is --node a MetaDisk node?",
    "bad-request": "the node could not read the request",
    "request-too-large": "the request is larger than the node accepts",
    "request-timeout": "the request was too slow to arrive",
    "too-many-connections": "too many connections from this address are open to the node",
    "node-busy": "the node has as many connections as it can take",
    "unavailable": "the node cannot serve this now (database or connections); try again later",
    # Transfers.
    "token-required": "pass --token or set METADISK_TOKEN",
    "invalid-token": "check --token or METADISK_TOKEN",
    "balance-insufficient": "the token has too little credit",
    "transfer-limit-reached": "the node's monthly transfer cap is reached",
    "unpaid-upload-limit": "the node takes in too many unpaid bytes now; try again later",
    "no-file": "no file arrived at the node",
    "length-required": "the node needs the upload's size (Content-Length)",
    "file-too-large": "the file is larger than this node accepts (metadisk status says how large)",
    "storage-full": "the node's storage is full: it cannot take this file now",
    "invalid-filehash": "a filehash is 64 hexadecimal digits",
    "invalid-key": "a key is 64 hexadecimal digits",
    "file-not-found": "this node knows no file with this filehash",
    "File not found": "this node knows no file with this filehash",
    "invalid-range": "the node cannot serve that part of the file",
    "error-downloading-file": "no host had an intact copy; charge refunded, try again later",
    # The accounts API, whose body is {"status": code}.
    "error": "an unknown token, or a promocode that is unknown or redeemed already",
    "invalid-authentication": "the node refused the secret key",
    # Resumable uploads (tus).
    "too-many-uploads": "the token has as many unfinished uploads as the node allows",
    "upload-not-found": "the node has no such unfinished upload; upload again",
    "upload-expired": "the unfinished upload expired (its credit was refunded); upload again",
    "upload-locked": "another request is still writing to this upload; try again in a moment",
    "upload-incomplete": "part of the file has not reached the node yet",
    "offset-mismatch": "the node holds a different part of the file than expected",
    "upload-length-exceeded": "more bytes were sent than the upload's declared size",
    "unsupported-version": "the node speaks another version of tus",
    "unsupported-content-type": "the upload's bytes were sent with the wrong Content-Type",
    "unsupported-checksum": "the node takes sha1 and sha256 checksums only",
    "checksum-mismatch": "part of the file arrived damaged and was discarded",
}


class CLIError(Exception):
    """Ends the command with one line on stderr and an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.details = details  # for --json: what the node said


class Unreachable(CLIError):
    """No connection to the node (refused, timed out, reset)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_UNREACHABLE)


def node_error(what: str, status: int, body: bytes, headers: Mapping[str, str]) -> CLIError:
    """The node's JSON error as one line: C{upload: balance-insufficient (HTTP 402)}."""
    try:
        details = json.loads(body)
        code = str(details.get("error") or details.get("status") or "")
    except (ValueError, AttributeError):
        details, code = None, ""
    code = code or _HEAD_ERRORS.get(status, http.client.responses.get(status, "error"))
    message = f"{what}: {code} (HTTP {status})"
    hint = MESSAGES.get(code)
    retry = headers.get("Retry-After")
    if retry:
        hint = f"{hint + '; ' if hint else ''}retry in {retry} s"
    if hint:
        message += f": {hint}"
    return CLIError(message, EXIT_FAILED, {"status": status, "error": code, "body": details})
