"""The small pure parts of the web layer: ranges, names, parameters, log redaction."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from metadisk.store.catalog import safe_filename
from metadisk.web.errors import APIError
from metadisk.web.files import byte_range, content_disposition
from metadisk.web.params import byte_count
from metadisk.web.site import redact_uri


class RangeTests(SynchronousTestCase):
    def test_satisfiable(self) -> None:
        self.assertIsNone(byte_range(None, 10))
        self.assertEqual(byte_range(b"bytes=0-4", 10), (0, 4))
        self.assertEqual(byte_range(b"bytes=5-", 10), (5, 9))
        self.assertEqual(byte_range(b"bytes=-3", 10), (7, 9))
        self.assertEqual(byte_range(b"bytes=-30", 10), (0, 9))
        self.assertEqual(byte_range(b"bytes=8-100", 10), (8, 9))
        self.assertEqual(byte_range(b"bytes = 1 - 2", 10), (1, 2))

    def test_unsatisfiable(self) -> None:
        for header in (
            b"bytes=10-",
            b"bytes=3-2",
            b"bytes=-0",
            b"bytes=-",
            b"bytes=a-b",
            b"bytes=0-1,3-4",
            b"lines=0-1",
            b"bytes=-1-2",
            b"bytes=99999999999999999999999999-",
        ):
            with self.assertRaises(APIError) as caught:
                byte_range(header, 10)
            self.assertEqual(caught.exception.status, 416, header)
            self.assertEqual(caught.exception.headers, {"Content-Range": "bytes */10"})
        with self.assertRaises(APIError):
            byte_range(b"bytes=0-", 0)


class NameTests(SynchronousTestCase):
    def test_safe_filename(self) -> None:
        self.assertEqual(safe_filename("report.pdf"), "report.pdf")
        self.assertEqual(safe_filename("../../etc/passwd"), "passwd")
        self.assertEqual(safe_filename("C:\\Users\\x\\secret.doc"), "secret.doc")
        self.assertEqual(safe_filename("a\x00b\nc\x1b[31m.txt"), "abc[31m.txt")
        self.assertEqual(safe_filename(".."), "file")
        self.assertEqual(safe_filename(""), "file")
        self.assertEqual(safe_filename(".hidden"), "hidden")
        self.assertEqual(len(safe_filename("x" * 10_000)), 200)
        self.assertEqual(safe_filename("résumé.txt"), "résumé.txt")

    def test_content_disposition(self) -> None:
        self.assertEqual(content_disposition("abc_a.txt"), 'attachment; filename="abc_a.txt"')
        self.assertEqual(
            content_disposition('abc_"q".txt'),
            "attachment; filename=\"abc__q_.txt\"; filename*=UTF-8''abc_%22q%22.txt",
        )
        header = content_disposition("abc_résumé.txt")
        header.encode("ascii")  # always a valid header value
        self.assertIn("filename*=UTF-8''abc_r%C3%A9sum%C3%A9.txt", header)


class ParameterTests(SynchronousTestCase):
    def test_byte_count(self) -> None:
        self.assertEqual(byte_count("123"), 123)
        self.assertEqual(byte_count(123), 123)
        self.assertEqual(byte_count(2**53), 2**53)
        self.assertEqual(byte_count("0001"), 1)
        for bad in (
            0,
            -1,
            "0",
            "-5",
            "1.5",
            1.5,
            "1e3",
            " 12",
            "12 ",
            "",
            None,
            True,
            [],
            {},
            2**53 + 1,
            str(2**64),
            "\u0661\u0662",
            "0x10",
        ):
            self.assertIsNone(byte_count(bad), repr(bad))


class RedactionTests(SynchronousTestCase):
    def test_query(self) -> None:
        self.assertEqual(
            redact_uri("/api/download/ab?key=0123456789&token=abcdefgh"),
            "/api/download/ab?key=0123...&token=abcd...",
        )
        self.assertEqual(redact_uri("/api/status"), "/api/status")
        self.assertEqual(redact_uri("/x?token=ab"), "/x?token=...")

    def test_path(self) -> None:
        for route in ("balance", "redeem", "deposit", "withdraw"):
            self.assertEqual(
                redact_uri(f"/accounts/token/{route}/adF7WFCpQR2EvFkG"),
                f"/accounts/token/{route}/adF7...",
            )
        self.assertEqual(redact_uri("/accounts/token/new"), "/accounts/token/new")
