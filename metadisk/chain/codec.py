"""
The on-chain format of metachains (docs/protocol.md, section 5).

A batch is the JSON array of file records (the C{find} payload). It is cut
into regions of at most 332 characters; region i travels as the entry

    {"prev_txid": <txid of entry i-1 or null>, "region": b64(bz2(region)),
     "total_length": <batch length>  (first entry) | "first_txid": <txid> (others),
     "index": i}

one entry per transaction. metachains aimed at 528-character batches and
took 196 characters of overhead for granted; a region that compresses badly
would still overflow florincoind's 528-byte tx-comment (which florincoind
truncates without a word), so regions are cut shorter until their entry fits.

Decoding never trusts its input: every limit is checked, and anything that
does not fit raises L{CodecError} for the caller to log and skip.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from attrs import frozen

from metadisk.store.catalog import FileRecord, safe_filename

MAX_BATCH = 528  # characters of a batch, where the records allow
MAX_REGION = 332  # characters of a region: 528 - metachains' 196 of overhead
MAX_ENTRY = 528  # bytes of an entry: florincoind's tx-comment limit
ANNOUNCEMENT_VERSION = "0.3"
_PLACEHOLDER_TXID = "0" * 64

# Limits on what is read from the chain.
MAX_ENTRY_IN = 100_000  # bytes of one entry
# Bytes of one decompressed region: writers cut regions of at most MAX_REGION characters;
# the margin is for other writers, not for what a few bytes of bz2 can expand to.
MAX_REGION_IN = 1024
MAX_BATCH_IN = 1 << 20  # bytes of a reassembled batch
MAX_INDEX_IN = 10_000
MAX_RECORDS_IN = 10_000
MAX_NAME_IN = 1024
MAX_UPLOADS_IN = 16  # hosts of one record: `copies` is 3 by default
MAX_HOST_NAME_IN = 200
MAX_URL_IN = 2048
MAX_NUMBER = 2**53
# Limits on a v0.3 manifest (docs/protocol.md, section 5.8), for writers and readers alike.
MAX_MANIFEST_RECORDS = 50_000
MAX_MANIFEST_SIZE = 16 << 20  # bytes of the bz2 manifest a reader fetches
MAX_MANIFEST_TEXT = 48 << 20  # bytes of its JSON, where decompression is stopped

_TXID = re.compile(r"[0-9a-fA-F]{64}")
_DIGITS = re.compile(r"[0-9]{1,16}")


class CodecError(ValueError):
    """Not a valid entry, batch or record; the message says why."""


# Writing


def pack(records: Sequence[dict[str, Any]], limit: int = MAX_BATCH) -> list[list[dict[str, Any]]]:
    """
    Records in batches whose JSON stays within C{limit} characters; a record
    longer than that on its own goes alone.
    """
    batches: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    for record in records:
        if current and len(batch_text([*current, record])) > limit:
            batches.append(current)
            current = []
        current.append(record)
    if current:
        batches.append(current)
    return batches


def batch_text(records: Sequence[dict[str, Any]]) -> str:
    """The batch as published: C{json.dumps} of the array (ASCII, so characters are bytes)."""
    return json.dumps(list(records))


def compress_region(region: bytes) -> str:
    return base64.b64encode(bz2.compress(region, 9)).decode("ascii")


def entry_text(
    region: bytes,
    index: int,
    prev_txid: str | None,
    first_txid: str | None,
    total_length: int,
) -> str:
    """The entry of region C{index}: the first carries C{total_length}, the others C{first_txid}."""
    entry: dict[str, Any] = {"prev_txid": prev_txid, "region": compress_region(region)}
    if index == 0:
        entry["total_length"] = total_length
    else:
        entry["first_txid"] = first_txid
    entry["index"] = index
    return json.dumps(entry)


def split_regions(
    text: str, max_entry: int = MAX_ENTRY, max_region: int = MAX_REGION
) -> list[bytes]:
    """
    The regions of a batch: at most C{max_region} characters each, and short
    enough that each entry (with real 64-digit txids) fits in C{max_entry} bytes.
    """
    data = text.encode("ascii")
    regions: list[bytes] = []
    offset = 0
    while offset < len(data):
        size = min(max_region, len(data) - offset)
        while True:
            region = data[offset : offset + size]
            index = len(regions)
            prev = None if index == 0 else _PLACEHOLDER_TXID
            first = None if index == 0 else _PLACEHOLDER_TXID
            overflow = len(entry_text(region, index, prev, first, len(data))) - max_entry
            if overflow <= 0:
                break
            if size == 1:
                raise CodecError(f"an entry cannot fit in {max_entry} bytes")
            # Base64 of bz2: a byte less of input saves well under a byte of output.
            size = max(1, size - max(1, overflow // 2))
        regions.append(region)
        offset += size
    return regions


# Reading


@frozen
class Entry:
    """One decoded entry: a region of a batch and its place in the batch."""

    index: int
    prev_txid: str | None
    first_txid: str | None  # None on the first entry
    total_length: int | None  # only on the first entry
    region: bytes

    def batch_id(self, txid: str) -> str:
        """The batch is named by the txid of its first entry."""
        return txid if self.index == 0 else str(self.first_txid)


def decode_entry(data: bytes | str) -> Entry:
    """Parse one entry read from the chain (a tx-comment or OP_RETURN data)."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > MAX_ENTRY_IN:
        raise CodecError(f"entry of {len(data)} bytes")
    try:
        entry = json.loads(data)
    except (ValueError, RecursionError):
        raise CodecError("entry is not JSON") from None
    if not isinstance(entry, dict):
        raise CodecError("entry is not a JSON object")
    index = _integer(entry.get("index"), "index", 0, MAX_INDEX_IN)
    region = _decompress(entry.get("region"))
    prev_txid = entry.get("prev_txid")
    if index == 0:
        if prev_txid is not None:
            raise CodecError("entry 0 has a prev_txid")
        total = _integer(entry.get("total_length"), "total_length", 1, MAX_BATCH_IN)
        if len(region) > total:
            raise CodecError("region longer than the batch")
        return Entry(0, None, None, total, region)
    return Entry(
        index,
        _txid(prev_txid, "prev_txid"),
        _txid(entry.get("first_txid"), "first_txid"),
        None,
        region,
    )


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CodecError(f"bad {name}: {str(value)[:40]!r}")
    return value


def _txid(value: Any, name: str) -> str:
    if not isinstance(value, str) or not _TXID.fullmatch(value):
        raise CodecError(f"bad {name}: {str(value)[:80]!r}")
    return value.lower()


def _decompress(value: Any) -> bytes:
    if not isinstance(value, str) or not value:
        raise CodecError("no region")
    try:
        compressed = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise CodecError("region is not base64") from None
    region = _bunzip(compressed, MAX_REGION_IN, "region")
    if not region:
        raise CodecError("empty region")
    return region


def _bunzip(data: bytes, longest: int, what: str) -> bytes:
    """
    One complete bzip2 stream, nothing after it, decompressed to at most
    C{longest} bytes: decompression stops past that, since a few hundred
    bytes of bzip2 can expand to gigabytes.
    """
    decompressor = bz2.BZ2Decompressor()
    try:
        data = decompressor.decompress(data, max_length=longest + 1)
    except (OSError, ValueError, EOFError):
        raise CodecError(f"{what} is not bz2") from None
    if len(data) > longest:
        raise CodecError(f"{what} too large once decompressed")
    if not decompressor.eof or decompressor.unused_data:
        raise CodecError(f"{what} is truncated or followed by garbage")
    return data


@frozen
class Fragment:
    """An entry seen on the chain, with its txid and where it was seen."""

    txid: str
    entry: Entry
    position: tuple[int, int]  # (block height, place in the block): earliest wins


def assemble(head: Fragment, others: Sequence[Fragment]) -> bytes | None:
    """
    The batch that starts with C{head}, from the entries of C{others} that
    follow it link by link (each naming the previous one's txid); None while
    entries are missing. Raises L{CodecError} if the links make no sense.
    """
    total = head.entry.total_length
    if head.entry.index != 0 or total is None:
        raise CodecError("not the first entry of a batch")
    chain = [head]
    size = len(head.entry.region)
    while size < total:
        index = len(chain)
        following = [
            f
            for f in others
            if f.entry.index == index
            and f.entry.prev_txid == chain[-1].txid
            and f.entry.first_txid == head.txid
        ]
        if not following:
            return None
        chain.append(min(following, key=lambda f: (f.position, f.txid)))
        size += len(chain[-1].entry.region)
    if size != total:
        raise CodecError(f"regions add up to {size} bytes, the batch says {total}")
    return b"".join(f.entry.region for f in chain)


@frozen
class Announcement:
    """
    A v0.3 item of a batch: a manifest of records, named by the SHA-256 of
    its bytes, and where it can be fetched (docs/protocol.md, section 5.8).
    """

    manifest: str
    records: int
    size: int
    uploads: tuple[tuple[str, str], ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": ANNOUNCEMENT_VERSION,
            "manifest": self.manifest,
            "records": self.records,
            "size": self.size,
            "uploads": [{"host_name": name, "url": url} for name, url in self.uploads],
        }


@frozen
class DecodedBatch:
    """What a batch says: its valid records and announcements; why other items were skipped."""

    records: list[FileRecord]
    announcements: list[Announcement]
    problems: list[str]


def decode_batch(data: bytes) -> DecodedBatch:
    """The valid items of a batch, and why the others were skipped."""
    items = _json_array(data, "batch", MAX_RECORDS_IN)
    decoded = DecodedBatch([], [], [])
    for item in items:
        try:
            if isinstance(item, dict) and item.get("version") == ANNOUNCEMENT_VERSION:
                decoded.announcements.append(parse_announcement(item))
            else:
                decoded.records.append(parse_record(item))
        except CodecError as e:
            decoded.problems.append(str(e))
    return decoded


def _json_array(data: bytes, what: str, longest: int) -> list[Any]:
    try:
        items = json.loads(data)
    except (ValueError, RecursionError):
        raise CodecError(f"{what} is not JSON") from None
    if not isinstance(items, list):
        raise CodecError(f"{what} is not a JSON array")
    if len(items) > longest:
        raise CodecError(f"{what} of {len(items)} records")
    return items


def parse_announcement(item: dict[str, Any]) -> Announcement:
    """A v0.3 announcement, checked; its URLs are checked as a record's are."""
    manifest = item.get("manifest")
    if not isinstance(manifest, str) or not _TXID.fullmatch(manifest):
        raise CodecError("bad manifest hash")
    return Announcement(
        manifest=manifest.lower(),
        records=_integer(item.get("records"), "records", 1, MAX_MANIFEST_RECORDS),
        size=_integer(item.get("size"), "size", 1, MAX_MANIFEST_SIZE),
        uploads=_uploads(item.get("uploads")),
    )


def manifest_bytes(records: Sequence[dict[str, Any]]) -> bytes:
    """
    A manifest: bzip2 (level 9) of the UTF-8 JSON array of the records, as
    C{json.dumps} writes it (ASCII, so the same bytes as a batch's text).
    """
    return compress_manifest(batch_text(records))


def compress_manifest(text: str) -> bytes:
    """The manifest of a batch's text (L{batch_text}): its bzip2, level 9."""
    return bz2.compress(text.encode("ascii"), 9)


def decode_manifest(data: bytes, announced: Announcement) -> tuple[list[FileRecord], list[str]]:
    """
    The valid records of a manifest fetched for C{announced}, and why the
    others were skipped; L{CodecError} if the manifest is not the one
    announced or not a manifest at all (none of its records is kept then).
    """
    if len(data) != announced.size:
        raise CodecError(f"manifest of {len(data)} bytes, announced {announced.size}")
    if hashlib.sha256(data).hexdigest() != announced.manifest:
        raise CodecError("manifest does not hash to its announced SHA-256")
    # A manifest that passed the hash can still be a bomb its publisher made.
    text = _bunzip(data, MAX_MANIFEST_TEXT, "manifest")
    items = _json_array(text, "manifest", announced.records)
    if len(items) != announced.records:
        raise CodecError(f"manifest of {len(items)} records, announced {announced.records}")
    decoded = DecodedBatch([], [], [])
    for item in items:
        try:
            decoded.records.append(parse_record(item))
        except CodecError as e:
            decoded.problems.append(str(e))
    return decoded.records, decoded.problems


def parse_record(item: Any) -> FileRecord:
    """A record of version "0.2" or "0.1" (metachains' C{payload.from_dict}), checked."""
    if not isinstance(item, dict):
        raise CodecError("record is not a JSON object")
    version = item.get("version")
    if version not in ("0.1", "0.2"):
        raise CodecError(f"unknown record version {str(version)[:20]!r}")
    filehash = item.get("filehash")
    if not isinstance(filehash, str) or not _TXID.fullmatch(filehash):
        raise CodecError("bad filehash")
    filehash = filehash.lower()
    if version == "0.2":
        # A stranger's name: no path, no control characters, whatever it says.
        filename = safe_filename(_text(item.get("filename"), "filename", MAX_NAME_IN), MAX_NAME_IN)
    else:
        filename = filehash[:10]
    return FileRecord(
        filehash=filehash,
        filename=filename,
        filesize=_number(item.get("filesize"), "filesize"),
        datetime=_number(item.get("datetime"), "datetime"),
        version=version,
        uploads=_uploads(item.get("uploads")),
    )


def _number(value: Any, name: str) -> int:
    """A whole number, as JSON has it or as a string of digits (datetime is a string)."""
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)
    return _integer(value, name, 0, MAX_NUMBER)


def _uploads(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or len(value) > MAX_UPLOADS_IN:
        raise CodecError("bad uploads")
    uploads = []
    for upload in value:
        if not isinstance(upload, dict):
            raise CodecError("bad upload")
        name = _text(upload.get("host_name"), "host_name", MAX_HOST_NAME_IN)
        url = upload.get("url")
        # "": a host that gives no URL (a node's local directory): named, never fetched.
        uploads.append((name, url if url == "" else _text(url, "url", MAX_URL_IN)))
    return tuple(uploads)


def _text(value: Any, name: str, longest: int) -> str:
    """A string the databases can store: UTF-8 encodable (no lone surrogates), no NUL."""
    if not isinstance(value, str) or not 0 < len(value) <= longest or "\x00" in value:
        raise CodecError(f"bad {name}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise CodecError(f"bad {name}") from None
    return value
