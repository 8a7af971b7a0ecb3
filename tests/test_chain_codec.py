"""
The on-chain format (docs/protocol.md, section 5): known answers, computed with the
bzip2 and base64 command-line tools over regions cut with dd, and hostile input.
"""

from __future__ import annotations

import base64
import bz2
import hashlib
import json
import random
import string

from twisted.trial.unittest import SynchronousTestCase

from metadisk.chain import codec
from metadisk.chain.codec import CodecError, Fragment, assemble, decode_batch, decode_entry
from metadisk.store.catalog import FileRecord

H1 = "b17fee6e8eb0c8dd7c1b8c4d3a3e5b1b6a8f3c2d1e0f9a8b7c6d5e4f3a2b1c0d"
RECORD1 = {
    "datetime": "1398875062",
    "filehash": H1,
    "filename": "b17fee6_WhatisStorj.pdf",
    "filesize": 337748,
    "uploads": [{"host_name": "ge_tt", "url": "http://ge.tt/162T7Ef1/v/0"}],
    "version": "0.2",
}
# printf '%s' "$batch" | bzip2 -9 | base64 -w0
REGION1 = (
    "QlpoOTFBWSZTWfBKlQsAAD8fgFAF//ACAAyKv/ffGjAAu2Q1NU9T1PUemaQnqaeptEHqNDamQip/qU9kE9KBphqZqA0A"
    "aDU9UAAAAAAaAhAVQQUENWXJYG2AyOpSuPSASBE7Aik4LbtxeQzTiF/bKFhoegxbhMZHvwlU8JR0mA63aVRiWR6Qc8uK"
    "clVVUljrQBmeEssIai683CzbSYnEl2DF/SJDi5OyQVebWLujRGtDe+sNUyQyEyjX8tXDkII8l2fmkGhqiLQaImJlSPWs"
    "4UHjN4fa6KtR5SNo/NlUuwtwXMmF/F3JFOFCQ8EqVCw="
)

H2 = "3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b"
RECORD2 = {
    "datetime": "1700000000",
    "filehash": H2,
    "filename": "3a7bd3e_annual report 2023 (final).pdf",
    "filesize": 1048576,
    "uploads": [
        {"host_name": f"local{i}", "url": f"file:///srv/metadisk/hosts/local{i}/{H2}"}
        for i in (1, 2, 3)
    ],
    "version": "0.2",
}
# dd bs=1 skip=0/332 count=332 | bzip2 -9 | base64 -w0
REGIONS2 = (
    "QlpoOTFBWSZTWaxZ0swAAFNbgAQAUGX/8AAIv2/fGjAA+KsJUamhomnk9KepoDIAYhgBk00GQwQ0xGjAlNQk9JsTVGj9"
    "UzSejSeo0ZqX8AiyRN3daQ3cs64Nn0V6O/m4EJr1dVuK29q2prPzCzfOUZjihjqV3GpYgXZkrEB4YdSg4eSxWpFtCh2I"
    "Eie8idSiKIyEesicmeXCN8x5UxZkOipkohBlH3T8o0+W71NhwORgxw0mXFJgbi8m0j3geOJ4ba8oZu5HMebKPOnAyLHo"
    "H92dNafAYLColBrNQnZZQ4RLersZMfiadn90yjfK6uEaxX01NSKlgIjorkLuSKcKEhWLOlmA",
    "QlpoOTFBWSZTWUiAVPUAAHybgFAF//AAAr9vnwowAMwCVI0NGjTQNANANDGExNBgjEMjCYFVTU9GVHtFHk0xNTT0g8oa"
    "gSE9Ej9zMSfRIMhSx0GsGkzODwgSi8RQ8c3eUXbWHdordCLw8LVa95TfK5urUTSdlWyCaTBWg9HRR1qWu7lsioiobqJM"
    "2jJWgxcFjJ7rmDJFk4WLWrqzbSezJi0q1YvjBBywOU5whFBnwxJffNX87XN181FCxJBekhxCr/F3JFOFCQSIBU9Q",
)
TXID_A = "aa" * 32
TXID_B = "bb" * 32


def entry_json(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def region(data: bytes) -> str:
    return base64.b64encode(bz2.compress(data)).decode()


class KnownAnswerTests(SynchronousTestCase):
    def test_one_region_batch(self) -> None:
        text = codec.batch_text([RECORD1])
        self.assertEqual(len(text), 258)
        regions = codec.split_regions(text)
        self.assertEqual(regions, [text.encode()])
        self.assertEqual(
            codec.entry_text(regions[0], 0, None, None, len(text)),
            '{"prev_txid": null, "region": "' + REGION1 + '", "total_length": 258, "index": 0}',
        )

    def test_two_region_batch(self) -> None:
        text = codec.batch_text([RECORD2])
        self.assertEqual(len(text), 616)
        regions = codec.split_regions(text)
        self.assertEqual([len(r) for r in regions], [332, 284])
        first = codec.entry_text(regions[0], 0, None, None, 616)
        second = codec.entry_text(regions[1], 1, TXID_A, TXID_A, 616)
        self.assertEqual(
            first,
            '{"prev_txid": null, "region": "' + REGIONS2[0] + '", "total_length": 616, "index": 0}',
        )
        self.assertEqual(
            second,
            f'{{"prev_txid": "{TXID_A}", "region": "{REGIONS2[1]}", '
            f'"first_txid": "{TXID_A}", "index": 1}}',
        )
        self.assertLessEqual(max(len(first), len(second)), codec.MAX_ENTRY)

    def test_decode_known_entries(self) -> None:
        """The metachains reader's view: regions joined by index give the batch back."""
        head = decode_entry(
            '{"prev_txid": null, "region": "' + REGIONS2[0] + '", "total_length": 616, "index": 0}'
        )
        tail = decode_entry(
            f'{{"prev_txid": "{TXID_A}", "region": "{REGIONS2[1]}", '
            f'"first_txid": "{TXID_A}", "index": 1}}'
        )
        data = assemble(Fragment(TXID_A, head, (5, 1)), [Fragment(TXID_B, tail, (6, 1))])
        assert data is not None
        decoded = decode_batch(data)
        self.assertEqual(decoded.problems, [])
        self.assertEqual([r.to_json() for r in decoded.records], [RECORD2])


class PackTests(SynchronousTestCase):
    def test_batches_kept_to_528_characters(self) -> None:
        records = [dict(RECORD1, filehash=f"{i:064x}") for i in range(7)]
        batches = codec.pack(records)
        self.assertEqual(sum(len(b) for b in batches), 7)
        self.assertEqual([r for b in batches for r in b], records)  # order kept
        for batch in batches:
            self.assertLessEqual(len(codec.batch_text(batch)), codec.MAX_BATCH)

    def test_long_record_goes_alone(self) -> None:
        long = dict(RECORD1, filename="x" * 2000)
        batches = codec.pack([RECORD1, long, RECORD1])
        self.assertEqual(batches, [[RECORD1], [long], [RECORD1]])

    def test_badly_compressing_regions_are_cut_shorter(self) -> None:
        """Random text grows under bz2+base64: regions shrink so every entry fits in 528 bytes."""
        rng = random.Random(7)
        name = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(3000))
        text = codec.batch_text([dict(RECORD1, filename=name)])
        regions = codec.split_regions(text)
        self.assertEqual(b"".join(regions), text.encode())
        self.assertLess(min(len(r) for r in regions[:-1]), codec.MAX_REGION)
        prev = None
        for i, part in enumerate(regions):
            self.assertLessEqual(len(part), codec.MAX_REGION)
            entry = codec.entry_text(part, i, prev, TXID_A if i else None, len(text))
            self.assertLessEqual(len(entry.encode()), codec.MAX_ENTRY)
            prev = f"{i:064x}"

    def test_round_trip_many_regions(self) -> None:
        rng = random.Random(3)
        records = [
            dict(RECORD2, filehash=f"{i:064x}", filename=f"{i:07x}_" + "é" * rng.randint(1, 900))
            for i in range(3)
        ]
        text = codec.batch_text(records)
        txids = [f"{i + 1:064x}" for i in range(100)]
        fragments = []
        for i, part in enumerate(codec.split_regions(text)):
            entry = codec.entry_text(part, i, txids[i - 1] if i else None, txids[0], len(text))
            fragments.append(Fragment(txids[i], decode_entry(entry.encode()), (i, 0)))
        rng.shuffle(fragments)
        head = next(f for f in fragments if f.entry.index == 0)
        data = assemble(head, fragments)
        assert data is not None
        self.assertEqual(data, text.encode())
        self.assertEqual([r.to_json() for r in decode_batch(data).records], records)
        # Missing one region: not complete yet.
        self.assertIsNone(assemble(head, [f for f in fragments if f.entry.index != 1]))


class HostileEntryTests(SynchronousTestCase):
    def assertRefused(self, data: bytes | str) -> None:
        self.assertRaises(CodecError, decode_entry, data)

    def test_garbage(self) -> None:
        good_region = region(b"[]")
        for data in (
            b"",
            b"not json",
            b"\xff\xfe\x00",
            b"[]",
            b"null",
            b'"text"',
            b"[" * 100_000,  # deep nesting
            b"{" * 50 + b"}" * 50,
            entry_json(index=0, total_length=2),  # no region
            entry_json(prev_txid=None, region="!!!", total_length=2, index=0),
            entry_json(prev_txid=None, region=base64.b64encode(b"plain").decode(), index=0),
            entry_json(prev_txid=None, region=good_region, total_length=2, index=True),
            entry_json(prev_txid=None, region=good_region, total_length=2, index=-1),
            entry_json(prev_txid=None, region=good_region, total_length=2, index=1.5),
            entry_json(prev_txid=None, region=good_region, total_length="2", index=0),
            entry_json(prev_txid=None, region=good_region, total_length=1, index=0),
            entry_json(prev_txid=None, region=good_region, total_length=2**40, index=0),
            entry_json(prev_txid=TXID_A, region=good_region, total_length=2, index=0),
            entry_json(prev_txid=None, region=good_region, first_txid=TXID_A, index=1),
            entry_json(prev_txid="x" * 64, region=good_region, first_txid=TXID_A, index=1),
            entry_json(prev_txid=TXID_A, region=good_region, first_txid=12, index=1),
            entry_json(prev_txid=TXID_A, region=good_region, first_txid=TXID_A, index=10**9),
            b" " * (codec.MAX_ENTRY_IN + 1),
        ):
            self.assertRefused(data)

    def test_bz2_bomb_is_bounded(self) -> None:
        bomb = base64.b64encode(bz2.compress(b"A" * 50_000_000)).decode()
        self.assertLess(len(bomb), 1000)
        self.assertRefused(entry_json(prev_txid=None, region=bomb, total_length=10**6, index=0))

    def test_truncated_and_trailing_compression(self) -> None:
        compressed = bz2.compress(b"[1, 2, 3]")
        for data in (compressed[:-4], compressed + b"junk", compressed + compressed):
            encoded = base64.b64encode(data).decode()
            self.assertRefused(entry_json(prev_txid=None, region=encoded, total_length=9, index=0))

    def test_inconsistent_links_are_refused_or_ignored(self) -> None:
        text = codec.batch_text([RECORD2]).encode()
        head = Fragment(
            TXID_A, decode_entry(codec.entry_text(text[:332], 0, None, None, 616)), (1, 0)
        )
        tail_text = codec.entry_text(text[332:], 1, TXID_A, TXID_A, 616)
        stranger = codec.entry_text(text[332:], 1, TXID_B, TXID_A, 616)  # wrong prev_txid
        other = codec.entry_text(text[332:], 1, TXID_A, TXID_B, 616)  # another batch
        longer = codec.entry_text(text[332:] + b"xx", 1, TXID_A, TXID_A, 616)
        tail = Fragment("cc" * 32, decode_entry(tail_text), (2, 0))
        self.assertIsNone(assemble(head, [Fragment("dd" * 32, decode_entry(stranger), (2, 1))]))
        self.assertIsNone(assemble(head, [Fragment("dd" * 32, decode_entry(other), (2, 1))]))
        # Two candidates for one place: the earliest on the chain wins.
        early_bad = Fragment("ee" * 32, decode_entry(longer), (2, 0))
        late_good = Fragment("ff" * 32, decode_entry(tail_text), (3, 0))
        self.assertRaises(CodecError, assemble, head, [late_good, early_bad])
        self.assertEqual(assemble(head, [tail]), text)


class RecordTests(SynchronousTestCase):
    def test_versions(self) -> None:
        self.assertEqual(codec.parse_record(RECORD1).to_json(), RECORD1)
        old = {
            "version": "0.1",
            "filehash": H1.upper(),
            "filesize": 10,
            "datetime": 1398875062,
            "uploads": [],
        }
        record = codec.parse_record(old)
        self.assertEqual(
            record, FileRecord(H1, H1[:10], 10, 1398875062, "0.1", ())
        )  # metachains' from_dict for 0.1

    def test_a_host_without_a_url(self) -> None:
        """A node's local directory is named in its record, with no URL: read, never fetched."""
        item = dict(RECORD1, uploads=[{"host_name": "local1", "url": ""}])
        self.assertEqual(codec.parse_record(item).uploads, (("local1", ""),))

    def test_a_strangers_name_is_made_safe(self) -> None:
        """No path and no control characters in a name read from the chain (Content-Disposition)."""
        for claimed, safe in (
            (f"{H1[:7]}_../../etc/passwd", "passwd"),
            (f"{H1[:7]}_invoice\u202egpj.exe", f"{H1[:7]}_invoicegpj.exe"),
            ("C:\\Windows\\x.dll", "x.dll"),
            ("..", "file"),
        ):
            self.assertEqual(codec.parse_record(dict(RECORD1, filename=claimed)).filename, safe)

    def test_bad_records_are_skipped_not_the_batch(self) -> None:
        bad = [
            "text",
            {},
            dict(RECORD1, version="0.3"),
            dict(RECORD1, filehash="../" * 21 + "a"),
            dict(RECORD1, filesize=-1),
            dict(RECORD1, filesize=True),
            dict(RECORD1, filesize=2**64),
            dict(RECORD1, datetime="yesterday"),
            dict(RECORD1, filename=""),
            dict(RECORD1, filename="a\x00b"),
            dict(RECORD1, filename="\ud800"),
            dict(RECORD1, filename="x" * 5000),
            dict(RECORD1, uploads={"host_name": "a", "url": "b"}),
            dict(RECORD1, uploads=[{"host_name": 1, "url": "b"}]),
            dict(RECORD1, uploads=[{"host_name": "a"}]),
            dict(RECORD1, uploads=[{"host_name": "a", "url": "b"}] * 1000),
        ]
        decoded = decode_batch(json.dumps([RECORD1, *bad, RECORD2]).encode())
        self.assertEqual([r.to_json() for r in decoded.records], [RECORD1, RECORD2])
        self.assertEqual(len(decoded.problems), len(bad))

    def test_bad_batches(self) -> None:
        for data in (b"{}", b"nope", b'{"a": 1}', json.dumps([{}] * 10_001).encode()):
            self.assertRaises(CodecError, decode_batch, data)


# docs/protocol.md, section 5.8: the two records of the manifest vector.
H3 = "58e128cb2c71951e0a86b57ed9e3ef38b39ad28187e2db0b4af23c9f671b4587"
MANIFEST_RECORDS = [
    {
        "datetime": "1700000000",
        "filehash": H3,
        "filename": "58e128c_hello.txt",
        "filesize": 12,
        "uploads": [
            {"host_name": "dav1", "url": f"http://dav1.example.org/blobs/{H3}"},
            {"host_name": "dav2", "url": f"https://dav2.example.net/metadisk/{H3}"},
        ],
        "version": "0.2",
    },
    {
        "datetime": "1700000060",
        "filehash": H2,
        "filename": "3a7bd3e_report.pdf",
        "filesize": 1048576,
        "uploads": [{"host_name": "dav1", "url": f"http://dav1.example.org/blobs/{H2}"}],
        "version": "0.2",
    },
]
# printf '%s' "$manifest_json" | bzip2 -9 | sha256sum  (770 bytes of JSON, 392 of bzip2)
MANIFEST_SHA256 = "2f210a95b1c66352932b4888ac63c0460b1ad17812d9ade599a5119bd23cab34"
MANIFEST_URLS = (
    ("dav1", f"http://dav1.example.org/blobs/{MANIFEST_SHA256}"),
    ("dav2", f"https://dav2.example.net/metadisk/{MANIFEST_SHA256}"),
    ("s3", f"https://metadisk-eu.s3.eu-west-1.amazonaws.com/manifests/{MANIFEST_SHA256}"),
)
ANNOUNCEMENT_REGION = (
    "QlpoOTFBWSZTWVaP7fAAAJGbgFAH//AACr/v39owATWFglFQbRMntSZNBkyepkBmoJFFGGk0GQAANAyBVSJkn6EGp+k0"
    "Gg0TahoxnSiNoaZKqVUZjrdvOqdzeMvTSHJVkhrApy+8WnabXvJOCSSrjYelof4CcOofuisFodgyBwdxn4Yz5GcibiJq"
    "thjsVmgtNMxrKzgUmRmMCJyIl41nYoLxHQVkisuKi6EHiSWWLCFReSLSwoKXjd3h5dHyZp7CRcbCw42bSk1E5pwoOJUb"
    "6ppqCZq9I+yoNsIRWyUbFR4RJmEcd6BU2JBKuTq6wYyN6dcS055dUMeC56T7AlW4rdabdE88rC2OYpKk9I2mUKGVRJgs"
    "B7IRKIYeRzHl/xdyRThQkFaP7fA="
)


def announcement(data: bytes, records: int, uploads=MANIFEST_URLS) -> codec.Announcement:
    return codec.Announcement(hashlib.sha256(data).hexdigest(), records, len(data), uploads)


class ManifestKnownAnswerTests(SynchronousTestCase):
    def test_manifest(self) -> None:
        data = codec.manifest_bytes(MANIFEST_RECORDS)
        self.assertEqual(len(data), 392)
        self.assertEqual(hashlib.sha256(data).hexdigest(), MANIFEST_SHA256)
        self.assertEqual(bz2.decompress(data), codec.batch_text(MANIFEST_RECORDS).encode())
        records, problems = codec.decode_manifest(data, announcement(data, 2))
        self.assertEqual(([r.to_json() for r in records], problems), (MANIFEST_RECORDS, []))

    def test_announcement_is_one_entry_with_three_urls(self) -> None:
        announced = codec.Announcement(MANIFEST_SHA256, 2, 392, MANIFEST_URLS)
        text = codec.batch_text([announced.to_json()])
        self.assertEqual(len(text), 553)
        self.assertTrue(text.startswith('[{"version": "0.3", "manifest": "2f210a95'))
        [region] = codec.split_regions(text, codec.MAX_ENTRY, codec.MAX_REGION_IN)
        entry = codec.entry_text(region, 0, None, None, len(text))
        self.assertEqual(len(entry), 462)
        self.assertEqual(json.loads(entry)["region"], ANNOUNCEMENT_REGION)
        decoded = decode_batch(decode_entry(entry).region)
        self.assertEqual((decoded.records, decoded.announcements), ([], [announced]))


class HostileManifestTests(SynchronousTestCase):
    def test_not_what_was_announced(self) -> None:
        data = codec.manifest_bytes(MANIFEST_RECORDS)
        tampered = data[:-1] + bytes([data[-1] ^ 1])
        for fetched, announced in (
            (tampered, announcement(data, 2)),  # other bytes: the hash fails
            (data + b"\0", announcement(data, 2)),  # longer than announced
            (data, announcement(data, 1)),  # more records than announced
            (data, announcement(data, 3)),  # fewer
        ):
            self.assertRaises(CodecError, codec.decode_manifest, fetched, announced)

    def test_bz2_bomb_is_bounded(self) -> None:
        bomb = bz2.compress(b"[" + b" " * (codec.MAX_MANIFEST_TEXT + 10) + b"]", 9)
        self.assertLess(len(bomb), 100_000)
        with self.assertRaises(CodecError) as caught:
            codec.decode_manifest(bomb, announcement(bomb, 1))
        self.assertIn("too large", str(caught.exception))

    def test_not_a_manifest(self) -> None:
        for text in (b"nope", b"{}", b"[1] trailing"):
            data = bz2.compress(text)
            self.assertRaises(CodecError, codec.decode_manifest, data, announcement(data, 1))
        self.assertRaises(CodecError, codec.decode_manifest, b"raw", announcement(b"raw", 1))

    def test_garbage_records_are_skipped_the_rest_kept(self) -> None:
        items = [RECORD1, {"version": "0.2"}, "text", announcement(b"x", 1).to_json(), RECORD2]
        data = bz2.compress(json.dumps(items).encode())
        records, problems = codec.decode_manifest(data, announcement(data, 5))
        self.assertEqual([r.to_json() for r in records], [RECORD1, RECORD2])
        self.assertEqual(len(problems), 3)  # a manifest inside a manifest is not a record

    def test_bad_announcements_are_skipped(self) -> None:
        good = announcement(b"x", 1).to_json()
        bad = [
            dict(good, manifest="zz"),
            dict(good, records=0),
            dict(good, records=codec.MAX_MANIFEST_RECORDS + 1),
            dict(good, size=codec.MAX_MANIFEST_SIZE + 1),
            dict(good, size="12"),
            dict(good, uploads=[{"host_name": "a"}]),
        ]
        decoded = decode_batch(json.dumps([*bad, good, RECORD1]).encode())
        self.assertEqual(len(decoded.problems), len(bad))
        self.assertEqual([a.to_json() for a in decoded.announcements], [good])
        self.assertEqual([r.to_json() for r in decoded.records], [RECORD1])
