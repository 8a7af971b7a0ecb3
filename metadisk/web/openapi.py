"""
The OpenAPI 3.1 document of the node's whole HTTP API, served at
C{/api/openapi.json}. It is built here rather than kept as a JSON file so
that the error shapes are written once; C{tests/test_openapi.py} keeps it
true (every route the Klein apps serve is in it and the other way round, and
a live node's answers validate against it).
"""

from __future__ import annotations

import functools
from typing import Any

from metadisk import routes
from metadisk.ledger import MAX_TRANSFER
from metadisk.web.errors import json_bytes

Schema = dict[str, Any]

HEX64 = "^[0-9a-fA-F]{64}$"
POSITIVE = "^[1-9][0-9]{0,15}$"  # decimal digits, not zero (the node also caps it at 2^53)
JSON = "application/json"
BINARY = "application/octet-stream"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(*codes: str) -> Schema:
    """The usual error body, C{{"error": code}}, with one of C{codes}."""
    return {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "enum": list(codes)}},
        "additionalProperties": False,
    }


def _status(*codes: str) -> Schema:
    """The accounts API's body, C{{"status": code}}."""
    return {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": list(codes)}},
        "additionalProperties": False,
    }


def _json(description: str, schema: Schema, headers: dict[str, Any] | None = None) -> Schema:
    response: Schema = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _header(description: str, schema: Schema | None = None, required: bool = True) -> Schema:
    return {
        "description": description,
        "required": required,
        "schema": schema or {"type": "string"},
    }


RETRY_AFTER = _header(
    "Seconds to wait before trying again.", {"type": "string", "pattern": "^[0-9]+$"}
)

# Answers any route may give, whatever its parameters.
_COMMON: dict[str, Schema] = {
    "408": _json(
        "The request line and headers did not arrive within `[node] header_timeout`; the"
        " connection is closed.",
        _error("request-timeout"),
    ),
    "429": _json(
        "This address presented too many unknown tokens (too-many-requests), or already holds"
        " `[node] max_connections_per_address` connections (too-many-connections: answered"
        " as the connection opens, before the request is read, and closed); answered at once.",
        _error("too-many-requests", "too-many-connections"),
        {"Retry-After": RETRY_AFTER},
    ),
    "503": _json(
        "The database cannot be reached, or the node has no file descriptors to spare for"
        " another connection (node-busy, with Retry-After, answered before the request is read).",
        _error("database-unavailable", "node-busy"),
        {"Retry-After": {**RETRY_AFTER, "required": False}},
    ),
}


def _responses(
    answers: dict[str, Schema],
    *,
    transfer: bool = False,
    upload: bool = False,
    small_body: bool = False,
) -> dict[str, Schema]:
    """
    C{answers} plus the common ones; 503 also names the monthly cap for
    transfers, and the budget of unpaid bytes for uploads.
    """
    responses = {**_COMMON, **answers}  # an operation may say more of a common status
    if transfer:
        codes = ["database-unavailable", "node-busy", "transfer-limit-reached"]
        description = (
            "The database cannot be reached, the node has no file descriptors to spare for"
            " another connection (node-busy), or the transfer would take the month past its cap"
            " (transfer-limit-reached, with Retry-After: seconds to the next month)"
        )
        if upload:
            codes.append("unpaid-upload-limit")
            description += (
                ", or the bytes that came before the token (or, accounts disabled, the upload)"
                " would take this address or the node past its budget of unpaid bytes"
                " (unpaid-upload-limit, with Retry-After)"
            )
        responses["503"] = _json(
            description + ".",
            _error(*codes),
            {"Retry-After": {**RETRY_AFTER, "required": False}},
        )
    if small_body:
        responses["413"] = _json("The request body is over 64 KiB.", _error("request-too-large"))
    return dict(sorted(responses.items()))


def _path_parameter(name: str, description: str, schema: Schema) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


FILEHASH = _path_parameter(
    "filehash", "SHA-256 of the ciphertext, 64 hex digits.", {"type": "string", "pattern": HEX64}
)
TOKEN_PATH = _path_parameter(
    "token", "An access token.", {"type": "string", "minLength": 1, "maxLength": 128}
)
TOKEN_QUERY = {
    "name": "token",
    "in": "query",
    "required": False,
    "description": "The access token that pays (required when accounts are enabled).",
    "schema": {"type": "string"},
}
KEY_QUERY = {
    "name": "key",
    "in": "query",
    "required": False,
    "description": "The file's key, 64 hex digits: the plaintext is served. Without it: the"
    " ciphertext.",
    "schema": {"type": "string", "pattern": HEX64},
}
RANGE = {
    "name": "Range",
    "in": "header",
    "required": False,
    "description": "One byte range, `bytes=FIRST-LAST`, `bytes=FIRST-` or `bytes=-SUFFIX`.",
    "schema": {"type": "string", "pattern": "^bytes=([0-9]+-[0-9]*|-[0-9]+)$"},
}
NOT_FOUND = _error("not-found")


def _link(operation_id: str, **parameters: str) -> Schema:
    """An OpenAPI link: how an answer feeds the parameters of another operation."""
    return {"operationId": operation_id, "parameters": parameters}


def _any_of(*schemas: Schema) -> Schema:
    return {"anyOf": list(schemas)}


def _download_headers(partial: bool) -> dict[str, Any]:
    headers = {
        "Content-Disposition": _header(
            '`attachment; filename="<filename>"` (and `filename*` for non-ASCII names).'
        ),
        "Content-Length": _header("Bytes in the body.", {"type": "string", "pattern": "^[0-9]+$"}),
        "Accept-Ranges": _header("Always `bytes`.", {"type": "string", "const": "bytes"}),
    }
    if partial:
        headers["Content-Range"] = _header(
            "`bytes FIRST-LAST/SIZE`.",
            {"type": "string", "pattern": "^bytes [0-9]+-[0-9]+/[0-9]+$"},
        )
    return headers


def _download(head: bool) -> Schema:
    def body(partial: bool) -> Schema:
        what = "The requested range" if partial else "The file"
        response: Schema = {
            "description": f"{what}: plaintext with `key`, else ciphertext.",
            "headers": _download_headers(partial),
        }
        if not head:
            response["content"] = {BINARY: {"schema": {"type": "string", "format": "binary"}}}
        return response

    answers: dict[str, Schema] = {
        "200": body(False),
        "206": body(True),
        "400": _json("Malformed filehash or key.", _error("invalid-filehash", "invalid-key")),
        "404": _json("No such file.", _any_of(_error("file-not-found"), NOT_FOUND)),
        "416": _json(
            "The range cannot be satisfied.",
            _error("invalid-range"),
            {"Content-Range": _header("`bytes */SIZE`.")},
        ),
    }
    if not head:
        answers |= {
            "401": _json("No token, or an unknown one.", _error("token-required", "invalid-token")),
            "402": _json(
                "The token's credit does not cover the download: the bytes asked for, and the"
                " whole blob's size when it must be fetched first (refused before the fetch).",
                _error("balance-insufficient"),
            ),
            "502": _json(
                "No host delivered a copy whose SHA-256 matches; the charge is refunded.",
                _error("error-downloading-file"),
            ),
            "507": _json(
                "The blob must be fetched from a host and the cache cannot make room.",
                _error("storage-full"),
            ),
        }
    operation: Schema = {
        "operationId": "headDownload" if head else "download",
        "tags": ["files"],
        "summary": "Headers of a download, free of charge." if head else "Download a file.",
        "description": (
            "The same headers as GET, no body, no charge."
            if head
            else "Costs the bytes served, twice that when the blob must first be fetched from"
            " a host. Bytes not delivered (the client went away before acknowledging them) are"
            " refunded."
        ),
        "parameters": [FILEHASH, KEY_QUERY, RANGE] + ([] if head else [TOKEN_QUERY]),
        "responses": _responses(answers, transfer=not head),
    }
    return operation


_BYTES_PROPERTY: Schema = {
    "description": "A whole number of bytes, 1 to 2^53, as a JSON integer or decimal digits.",
    "anyOf": [
        {"type": "integer", "minimum": 1, "maximum": MAX_TRANSFER},
        {"type": "string", "pattern": POSITIVE},
    ],
}


def _parameters_body(name: str, schema: Schema, description: str) -> Schema:
    """Accounts parameters come as JSON, as a form, or in the query string (see the query)."""
    return {
        "required": False,
        "description": description,
        "content": {
            JSON: {
                "schema": {
                    "type": "object",
                    "properties": {name: schema},
                    "required": [name],
                }
            },
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {name: {"type": "string"}},
                    "required": [name],
                }
            },
        },
    }


def _private(operation_id: str, summary: str, extra: dict[str, Schema]) -> Schema:
    return {
        "operationId": operation_id,
        "tags": ["private"],
        "summary": summary,
        "description": "Private: needs the node's secret key in the `Authentication` header."
        " When `[node] private_listen` is set, served only on that listener (404 elsewhere).",
        "security": [{"secretKey": []}],
        "parameters": [
            TOKEN_PATH,
            {
                "name": "bytes",
                "in": "query",
                "required": False,
                "description": "Used when the body does not carry `bytes`.",
                "schema": {"type": "string", "pattern": POSITIVE},
            },
        ],
        "requestBody": _parameters_body(
            "bytes", _BYTES_PROPERTY, "`bytes` as JSON, a form or in the query string."
        ),
        "responses": _responses(
            {
                "200": _json("Done.", _status("ok")),
                "400": _json(
                    "`bytes` missing or malformed, or an unknown token.", _status("bad-request")
                ),
                "401": _json(
                    "Missing or wrong `Authentication`.", _status("invalid-authentication")
                ),
                "404": _json(
                    "Not served on this listener (see `private_listen`), or a malformed path.",
                    NOT_FOUND,
                ),
                **extra,
            },
            small_body=True,
        ),
    }


_PAIR = {
    "type": "object",
    "required": ["incoming", "outgoing"],
    "properties": {
        "incoming": {"type": "integer", "minimum": 0},
        "outgoing": {"type": "integer", "minimum": 0},
    },
}
# The chain: its name, the node's wallet address, the height the node has read to.
_CHAIN: dict[str, Schema] = {
    "coin": {"type": "string"},
    "address": {"type": ["string", "null"]},
    "block": {"type": "integer", "minimum": 0},
}
_QUEUE = {
    "type": "object",
    "required": ["count", "size"],
    "properties": {
        "count": {"type": "integer", "minimum": 0},
        "size": {"type": "integer", "minimum": 0},
    },
}

SCHEMAS: dict[str, Schema] = {
    "UploadResult": {
        "type": "object",
        "required": ["filehash", "key"],
        "properties": {
            "filehash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "key": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        },
        "additionalProperties": False,
    },
    "FileRecord": {
        "type": "object",
        "required": ["datetime", "filehash", "filename", "filesize", "uploads", "version"],
        "properties": {
            "datetime": {"type": "string", "pattern": "^[0-9]+$", "description": "Unix seconds."},
            "filehash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "filename": {
                "type": "string",
                "pattern": "^[0-9a-f]{7}_",
                "description": "7 hex digits of the filehash, `_`, the uploaded name made safe.",
            },
            "filesize": {"type": "integer", "minimum": 0},
            "uploads": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["host_name", "url"],
                    "properties": {"host_name": {"type": "string"}, "url": {"type": "string"}},
                },
            },
            "version": {"type": "string"},
        },
    },
    "ChainStatus": {
        "type": "object",
        "required": ["balance", *_CHAIN],
        "properties": {"balance": {"type": "number"}, **_CHAIN},
    },
    "NodeStatus": {
        "type": "object",
        "required": ["bandwidth", "storage", "sync", "datacoin", "florincoin", "metachains"],
        "properties": {
            "bandwidth": {
                "type": "object",
                "required": ["total", "current", "limits", "rate", "rate_limits"],
                "properties": {
                    name: _PAIR for name in ("total", "current", "limits", "rate", "rate_limits")
                },
            },
            "storage": {
                "type": "object",
                "required": ["capacity", "used", "max_file_size"],
                "properties": {
                    name: {"type": "integer", "minimum": 0}
                    for name in ("capacity", "used", "max_file_size")
                },
            },
            "sync": {
                "type": "object",
                "required": ["blockchain_queue", "cloud_queue", "manifests"],
                "properties": {
                    "blockchain_queue": _QUEUE,
                    "cloud_queue": _QUEUE,
                    # v0.3 manifests (docs/protocol.md 5.8): not fetched yet; records read.
                    "manifests": {
                        "type": "object",
                        "required": ["pending", "records"],
                        "properties": {
                            "pending": {"type": "integer", "minimum": 0},
                            "records": {"type": "integer", "minimum": 0},
                        },
                    },
                },
            },
            "datacoin": _ref("ChainStatus"),
            "florincoin": _ref("ChainStatus"),
            # What web-core's last version answered: the chain, without the wallet's balance.
            "metachains": {
                "type": "object",
                "required": list(_CHAIN),
                "properties": _CHAIN,
            },
        },
    },
}


TUS_VERSION = "1.0.0"
OFFSET_STREAM = "application/offset+octet-stream"
DIGITS = {"type": "string", "pattern": "^[0-9]+$"}
UPLOAD_ID = _path_parameter(
    "upload_id",
    "The upload's id, from the `Location` of its creation: its capability (anyone who has it"
    " may resume, read or end the upload).",
    {"type": "string", "minLength": 1},
)


def _tus_header(name: str, description: str, schema: Schema, required: bool = True) -> Schema:
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": schema,
    }


TUS_RESUMABLE = _tus_header(
    "Tus-Resumable",
    "The tus version the client speaks.",
    {"type": "string", "const": TUS_VERSION, "example": TUS_VERSION},
)
UPLOAD_CHECKSUM = _tus_header(
    "Upload-Checksum",
    "`sha1 BASE64` or `sha256 BASE64`: the digest of this request's body. A body that does not"
    " match is discarded (460).",
    {"type": "string", "pattern": "^(sha1|sha256) [A-Za-z0-9+/]+=*$"},
    required=False,
)
_TUS_HEADERS = {"Tus-Resumable": _header("`1.0.0`.", {"type": "string", "const": TUS_VERSION})}
_EXPIRES = _header("When an unfinished upload is removed (RFC 9110 date).")
_RESULT_HEADERS = {
    "MetaDisk-Filehash": _header(
        "The stored file's filehash, once the last byte is in.",
        {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        required=False,
    ),
    "MetaDisk-Key": _header(
        "The stored file's key, once the last byte is in.",
        {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        required=False,
    ),
}
_OFFSET_BODY = {
    "required": False,
    "content": {OFFSET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
}


def _tus_error(description: str, *codes: str, **headers: Schema) -> Schema:
    return _json(description, _error(*codes), {**_TUS_HEADERS, **headers})


_TUS_404 = _json(
    "No such upload on this node (counted as a guess, as an unknown token is).",
    _any_of(_error("upload-not-found"), NOT_FOUND),
)
_TUS_410 = _tus_error(
    "The upload expired: its bytes are gone, its credit refunded.", "upload-expired"
)
_TUS_412 = _tus_error(
    "No `Tus-Resumable: 1.0.0`.", "unsupported-version", **{"Tus-Version": _header("`1.0.0`.")}
)
_TUS_423 = _tus_error("Another request is writing to this upload; try again.", "upload-locked")


def _tus_paths() -> dict[str, Schema]:
    """The tus protocol's operations: docs/protocol.md section 2.10."""
    offset_headers = {
        **_TUS_HEADERS,
        "Upload-Offset": _header("Bytes of the upload durably stored.", DIGITS),
        "Upload-Length": _header("The upload's length.", DIGITS),
        "Upload-Expires": _EXPIRES,
        **_RESULT_HEADERS,
    }
    options = {
        "operationId": "tusOptions",
        "tags": ["resumable"],
        "summary": "What this node speaks of tus.",
        "responses": _responses(
            {
                "204": {
                    "description": "The tus versions, extensions, largest upload and checksums.",
                    "headers": {
                        "Tus-Version": _header("`1.0.0`."),
                        "Tus-Extension": _header(
                            "`creation,creation-with-upload,termination,expiration,checksum`."
                        ),
                        "Tus-Max-Size": _header("`[storage] max_file_size`.", DIGITS),
                        "Tus-Checksum-Algorithm": _header("`sha1,sha256`."),
                    },
                }
            }
        ),
    }
    create = {
        "operationId": "tusCreate",
        "tags": ["resumable"],
        "summary": "Create a resumable upload, with its first bytes if the body has any.",
        "description": "Reserves 4 x Upload-Length on the token (settled when the last byte is"
        " in, refunded if the upload is terminated or expires). The token comes as `?token=` or"
        " in Upload-Metadata (`token`, with `filename`).",
        "parameters": [
            TUS_RESUMABLE,
            _tus_header(
                "Upload-Length",
                "The whole upload's length in bytes.",
                {**DIGITS, "example": "1000"},
            ),
            _tus_header(
                "Upload-Metadata",
                "`key base64(value)` pairs, comma-separated: `filename`, `token`.",
                {"type": "string"},
                required=False,
            ),
            UPLOAD_CHECKSUM,
            TOKEN_QUERY,
        ],
        "requestBody": _OFFSET_BODY,
        "responses": _responses(
            {
                "201": {
                    "description": "Created; `Location` is the upload's URL.",
                    "headers": {
                        **offset_headers,
                        "Location": _header(
                            "`/api/tus/<upload_id>`.", {"type": "string", "pattern": "^/api/tus/"}
                        ),
                    },
                },
                "400": _tus_error(
                    "Upload-Length missing or malformed, Upload-Metadata malformed,"
                    " Upload-Defer-Length given (bad-request); an unknown checksum algorithm.",
                    "bad-request",
                    "unsupported-checksum",
                ),
                "401": _tus_error(
                    "No token, or an unknown one.", "token-required", "invalid-token"
                ),
                "402": _tus_error(
                    "The token's credit does not cover 4 x Upload-Length.", "balance-insufficient"
                ),
                "411": _tus_error("A chunked body: Content-Length is needed.", "length-required"),
                "412": _TUS_412,
                "413": _tus_error(
                    "Upload-Length over `max_file_size` (accounts disabled, also over an"
                    " address's share of the unpaid budget); a body longer than Upload-Length.",
                    "file-too-large",
                    "upload-length-exceeded",
                ),
                "415": _tus_error(
                    "A body that is not `application/offset+octet-stream`.",
                    "unsupported-content-type",
                ),
                "429": _json(
                    "Too many unknown tokens or connections from this address (as on every"
                    " route), or the token already has `[uploads] resumable_per_token`"
                    " unfinished uploads (too-many-uploads; Retry-After: until the first of them"
                    " expires).",
                    _error("too-many-requests", "too-many-connections", "too-many-uploads"),
                    {"Retry-After": RETRY_AFTER},
                ),
                "460": _tus_error(
                    "The body does not match Upload-Checksum: discarded.", "checksum-mismatch"
                ),
                "507": _json("The cache cannot make room.", _error("storage-full")),
            },
            transfer=True,
            upload=True,
        ),
    }
    head = {
        "operationId": "tusOffset",
        "tags": ["resumable"],
        "summary": "Where to resume: the bytes durably stored.",
        "parameters": [UPLOAD_ID, TUS_RESUMABLE],
        "responses": _responses(
            {
                "200": {"description": "The upload's offset.", "headers": offset_headers},
                "404": _TUS_404,
                "410": _TUS_410,
                "412": _TUS_412,
            }
        ),
    }
    patch = {
        "operationId": "tusPatch",
        "tags": ["resumable"],
        "summary": "Send bytes of the upload from Upload-Offset.",
        "description": "A 204 means the bytes are durable. A request cut short keeps what"
        " arrived (without Upload-Checksum); HEAD says where to go on. The last byte stores the"
        " file as `POST /api/upload` does: the 204 then carries its filehash and key.",
        "parameters": [
            UPLOAD_ID,
            TUS_RESUMABLE,
            _tus_header("Upload-Offset", "Where these bytes go: the upload's offset.", DIGITS),
            UPLOAD_CHECKSUM,
        ],
        "requestBody": {**_OFFSET_BODY, "required": True},
        "responses": _responses(
            {
                "204": {"description": "Stored durably.", "headers": offset_headers},
                "400": _tus_error(
                    "Upload-Offset missing or malformed, a malformed checksum (bad-request);"
                    " an unknown checksum algorithm.",
                    "bad-request",
                    "unsupported-checksum",
                ),
                "404": _TUS_404,
                "409": _tus_error(
                    "Upload-Offset is not the upload's offset.",
                    "offset-mismatch",
                    **{"Upload-Offset": _header("The upload's offset.", DIGITS)},
                ),
                "410": _TUS_410,
                "411": _tus_error("A chunked body: Content-Length is needed.", "length-required"),
                "412": _TUS_412,
                "413": _tus_error(
                    "The body would take the upload past its Upload-Length.",
                    "upload-length-exceeded",
                ),
                "415": _tus_error(
                    "Not `application/offset+octet-stream`.", "unsupported-content-type"
                ),
                "423": _TUS_423,
                "460": _tus_error(
                    "The body does not match Upload-Checksum: discarded.", "checksum-mismatch"
                ),
                "507": _json(
                    "The bytes could not be written, or the cache cannot make room for the"
                    " finished file.",
                    _error("storage-full"),
                ),
            },
            transfer=True,
        ),
    }
    delete = {
        "operationId": "tusTerminate",
        "tags": ["resumable"],
        "summary": "End the upload: its bytes go and its credit is refunded.",
        "parameters": [UPLOAD_ID, TUS_RESUMABLE],
        "responses": _responses(
            {
                "204": {"description": "Terminated.", "headers": _TUS_HEADERS},
                "404": _TUS_404,
                "410": _TUS_410,
                "412": _TUS_412,
                "423": _TUS_423,
            }
        ),
    }
    result = {
        "operationId": "tusResult",
        "tags": ["resumable"],
        "summary": "What a finished upload became (not tus): until it expires.",
        "parameters": [UPLOAD_ID],
        "responses": _responses(
            {
                "200": _json("Stored.", _ref("UploadResult")),
                "404": _TUS_404,
                "409": _tus_error(
                    "Bytes are still missing.",
                    "upload-incomplete",
                    **{"Upload-Offset": _header("The upload's offset.", DIGITS)},
                ),
                "410": _TUS_410,
                "423": _TUS_423,
                "507": _json("The cache cannot make room.", _error("storage-full")),
            }
        ),
    }
    return {
        routes.TUS: {"options": options, "post": create},
        routes.TUS_UPLOAD: {"head": head, "patch": patch, "delete": delete, "get": result},
    }


def _paths() -> dict[str, Schema]:
    upload = {
        "operationId": "upload",
        "tags": ["files"],
        "summary": "Upload a file.",
        "description": "Costs 4 x the file's size: 4 x Content-Length is reserved before the"
        " body is read and settled when the file is stored. Send `token` before `file` (or in"
        " the query) so the payer is known before the first file byte. Content-Length is"
        " required; no chunked bodies.",
        "parameters": [TOKEN_QUERY],
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "token": {"type": "string", "maxLength": 128},
                            "file": {"type": "string", "format": "binary"},
                        },
                    },
                    "encoding": {"file": {"contentType": BINARY}},
                }
            },
        },
        "responses": _responses(
            {
                "201": _json("Stored.", _ref("UploadResult"))
                | {
                    "links": {
                        op: _link(
                            op,
                            filehash="$response.body#/filehash",
                            **({} if op == "find" else {"key": "$response.body#/key"}),
                        )
                        for op in ("find", "download", "headDownload")
                    }
                },
                "400": _json(
                    "No `file` part or not multipart (no-file); malformed multipart, two files"
                    " or an over-long token field (bad-request).",
                    _error("no-file", "bad-request"),
                ),
                "401": _json(
                    "No token, or an unknown one.", _error("token-required", "invalid-token")
                ),
                "402": _json(
                    "The token's credit does not cover 4 x Content-Length.",
                    _error("balance-insufficient"),
                ),
                "411": _json("No Content-Length.", _error("length-required")),
                "413": _json(
                    "Over max_file_size (decided from Content-Length before the body, and"
                    " again as it streams); with accounts disabled, also over an address's"
                    " share of the unpaid budget.",
                    _error("file-too-large"),
                ),
                "507": _json("The cache cannot make room.", _error("storage-full")),
            },
            transfer=True,
            upload=True,
        ),
    }
    find = {
        "operationId": "find",
        "tags": ["files"],
        "summary": "The record of a file: name, size, date and the hosts that hold it.",
        "parameters": [FILEHASH],
        "responses": _responses(
            {
                "200": _json("The record.", _ref("FileRecord")),
                "404": _json(
                    "No such file (or a malformed filehash).",
                    _any_of(_error("File not found"), NOT_FOUND),
                ),
            }
        ),
    }
    status = {
        "operationId": "status",
        "tags": ["files"],
        "summary": "Bandwidth, storage, sync queues and chain wallet.",
        "responses": _responses({"200": _json("The node's status.", _ref("NodeStatus"))}),
    }
    openapi = {
        "operationId": "openapi",
        "tags": ["files"],
        "summary": "This document.",
        "responses": _responses({"200": _json("OpenAPI 3.1.", {"type": "object"})}),
    }
    new = {
        "operationId": "newToken",
        "tags": ["accounts"],
        "summary": "A new access token with no credit.",
        "responses": _responses(
            {
                "200": _json(
                    "The token.",
                    {
                        "type": "object",
                        "required": ["token"],
                        "properties": {"token": {"type": "string", "pattern": "^[A-Za-z0-9]{16}$"}},
                        "additionalProperties": False,
                    },
                )
                | {
                    "links": {
                        op: _link(op, token="$response.body#/token")
                        for op in ("balance", "redeem", "deposit", "withdraw")
                    }
                }
            },
            small_body=True,
        ),
    }
    prices = {
        "operationId": "prices",
        "tags": ["accounts"],
        "summary": "The price list.",
        "responses": _responses(
            {
                "200": _json(
                    "Prices.",
                    {
                        "type": "object",
                        "required": ["prices"],
                        "properties": {
                            "prices": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["amount", "cost"],
                                    "properties": {
                                        "amount": {"type": "integer"},
                                        "cost": {"type": "integer"},
                                    },
                                },
                            }
                        },
                    },
                )
            }
        ),
    }
    balance = {
        "operationId": "balance",
        "tags": ["accounts"],
        "summary": "A token's credit, in bytes.",
        "parameters": [TOKEN_PATH],
        "responses": _responses(
            {
                "200": _json(
                    "The balance.",
                    {
                        "type": "object",
                        "required": ["balance"],
                        "properties": {"balance": {"type": "integer", "minimum": 0}},
                        "additionalProperties": False,
                    },
                ),
                "404": _json("Unknown token.", _any_of(_status("error"), NOT_FOUND)),
            }
        ),
    }
    redeem = {
        "operationId": "redeem",
        "tags": ["accounts"],
        "summary": "Credit a promocode to a token; once per token.",
        "parameters": [
            TOKEN_PATH,
            {
                "name": "promocode",
                "in": "query",
                "required": False,
                "description": "Used when the body does not carry `promocode`.",
                "schema": {"type": "string"},
            },
        ],
        "requestBody": _parameters_body(
            "promocode", {"type": "string"}, "`promocode` as JSON, a form or in the query string."
        ),
        "responses": _responses(
            {
                "201": _json("Credited.", _status("ok")),
                "403": _json("Unknown token, unknown or used code.", _status("error")),
                "404": _json("A malformed path.", NOT_FOUND),
            },
            small_body=True,
        ),
    }
    return {
        routes.UPLOAD: {"post": upload},
        routes.DOWNLOAD: {"get": _download(head=False), "head": _download(head=True)},
        routes.FIND: {"get": find},
        routes.STATUS: {"get": status},
        **_tus_paths(),
        routes.OPENAPI: {"get": openapi},
        routes.NEW_TOKEN: {"post": new},
        routes.PRICES: {"get": prices},
        routes.BALANCE: {"get": balance},
        routes.REDEEM: {"post": redeem},
        routes.DEPOSIT: {"post": _private("deposit", "Add credit to a token.", {})},
        routes.WITHDRAW: {
            "post": _private(
                "withdraw",
                "Take credit from a token.",
                {
                    "402": _json(
                        "A well-formed withdrawal above the balance.",
                        _status("balance-insufficient"),
                    )
                },
            )
        },
        routes.METRICS: {
            "get": {
                "operationId": "metrics",
                "tags": ["operations"],
                "summary": "Prometheus text format; every metric is named `metadisk_…`.",
                "responses": _responses(
                    {
                        "200": {
                            "description": "The metrics.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    }
                ),
            }
        },
        routes.PAGE: {
            "get": {
                "operationId": "page",
                "tags": ["operations"],
                "summary": "The MetaDisk web page (its assets are served beside it).",
                "responses": _responses(
                    {
                        "200": {
                            "description": "The page.",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        },
                        "304": {"description": "Not modified (If-None-Match)."},
                    }
                ),
            }
        },
    }


def document() -> Schema:
    """The OpenAPI document, as a fresh dict."""
    from metadisk import __version__

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "MetaDisk node",
            "version": __version__,
            "description": "Convergent-encrypted file hosting, compatible with Storj web-core."
            " Every error is JSON. A request the HTTP parser cannot take (request line or"
            " headers over 16 KiB, more than 500 headers, a malformed Content-Length) gets"
            ' 400 `{"error": "bad-request"}` and the connection is closed. A wrong method gets'
            ' 405 `{"error": "method-not-allowed"}`, an unknown route 404'
            ' `{"error": "not-found"}`. A connection from an address that already holds'
            " `[node] max_connections_per_address` connections gets 429"
            ' `{"error": "too-many-connections"}` before its request is read; one the node has no'
            ' file descriptors for, 503 `{"error": "node-busy"}` (or it is closed at once); a'
            " request whose line and headers take longer than `[node] header_timeout`, 408"
            ' `{"error": "request-timeout"}` (a connection that sent nothing is closed).',
        },
        "tags": [
            {"name": "files"},
            {"name": "accounts"},
            {"name": "private"},
            {"name": "resumable"},
            {"name": "operations"},
        ],
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "secretKey": {"type": "apiKey", "in": "header", "name": "Authentication"}
            },
        },
    }


@functools.cache
def served() -> bytes:
    """The document as served, in JSON: built and encoded once per process, never changed."""
    return json_bytes(document())
