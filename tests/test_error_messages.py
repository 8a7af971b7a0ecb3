"""
One list of error codes, checked: every code the OpenAPI document says the
node can answer has a sentence on the web page (C{MESSAGES} in app.js) and a
message in the command-line client (L{metadisk.client.errors.MESSAGES}).
A code added to the document without both fails here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from metadisk.client import errors
from metadisk.web.openapi import document

APP_JS = Path(__file__).resolve().parent.parent / "metadisk" / "web" / "static" / "app.js"


def _body_codes(schema: dict[str, Any], doc: dict[str, Any]) -> Iterator[str]:
    """The codes an error body allows: its C{error} or C{status} enum, through anyOf and $ref."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = doc["components"]["schemas"][name]
    for alternative in schema.get("anyOf", []) + schema.get("oneOf", []):
        yield from _body_codes(alternative, doc)
    for field in ("error", "status"):  # the accounts API answers {"status": code}
        yield from schema.get("properties", {}).get(field, {}).get("enum", [])


def documented_codes() -> dict[str, set[str]]:
    """Every error code the document names, with where: C{{code: {"POST /api/upload 402"}}}."""
    doc = document()
    found: dict[str, set[str]] = {}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue  # {"status": "ok"} is no error
                for content in response.get("content", {}).values():
                    for code in _body_codes(content["schema"], doc):
                        found.setdefault(code, set()).add(f"{method.upper()} {path} {status}")
    # Answers of any route that the document names in prose (a wrong method, an unknown route).
    for code in re.findall(r'\{"error": "([^"]+)"\}', doc["info"]["description"]):
        found.setdefault(code, set()).add("info.description")
    return found


def _page_table(name: str) -> list[str]:
    """The lines of C{const NAME = { … };} in app.js."""
    text = APP_JS.read_text(encoding="utf-8")
    match = re.search(rf"^  const {name} = \{{\n(.*?)^  \}};$", text, re.M | re.S)
    if match is None:
        raise AssertionError(f"app.js has no `const {name} = {{ … }};`")
    return match.group(1).splitlines()


def page_messages() -> dict[str, str]:
    """The page's MESSAGES: one C{'code': 'sentence',} a line, and nothing else."""
    messages: dict[str, str] = {}
    for line in _page_table("MESSAGES"):
        match = re.fullmatch(r"    '([^'\\]+)': '((?:[^'\\]|\\.)+)',", line)
        if match is None:
            raise AssertionError(f"app.js MESSAGES: a line this test cannot read: {line!r}")
        code, sentence = match.groups()
        if code in messages:
            raise AssertionError(f"app.js MESSAGES: {code!r} twice")
        messages[code] = sentence
    return messages


def page_by_status() -> dict[int, str]:
    """The page's BY_STATUS: C{400: 'code',} entries, several a line."""
    entries: dict[int, str] = {}
    for line in _page_table("BY_STATUS"):
        pairs = re.findall(r"(\d{3}): '([^']+)',", line)
        if re.sub(r"\d{3}: '[^']+',", "", line).strip():
            raise AssertionError(f"app.js BY_STATUS: a line this test cannot read: {line!r}")
        entries.update((int(status), code) for status, code in pairs)
    return entries


class ErrorCodeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.codes = documented_codes()

    def missing(self, known: set[str] | dict[str, Any]) -> dict[str, list[str]]:
        return {code: sorted(where) for code, where in self.codes.items() if code not in known}

    def test_every_kind_of_answer_is_read(self) -> None:
        # An enum, an anyOf, the accounts' status, the prose: each way a code is written.
        for code in ("storage-full", "File not found", "invalid-authentication", "error"):
            self.assertIn(code, self.codes)
        self.assertEqual(self.codes["method-not-allowed"], {"info.description"})
        self.assertNotIn("ok", self.codes)

    def test_the_page_has_a_sentence_for_every_code(self) -> None:
        self.assertEqual(self.missing(page_messages()), {})

    def test_the_cli_has_a_message_for_every_code(self) -> None:
        self.assertEqual(self.missing(errors.MESSAGES), {})

    def test_the_cli_prints_the_message(self) -> None:
        for code in self.codes:
            for field in ("error", "status"):
                body = json.dumps({field: code}).encode()
                line = str(errors.node_error("find", 400, body, {}))
                self.assertEqual(line, f"find: {code} (HTTP 400): {errors.MESSAGES[code]}")

    def test_a_status_alone_means_a_code_with_a_message(self) -> None:
        # HEAD answers have no body: the status stands for a code, which must have its sentence.
        messages = page_messages()
        for status, code in page_by_status().items():
            self.assertIn(code, messages, f"app.js BY_STATUS {status}")
        for status, code in errors._HEAD_ERRORS.items():
            self.assertIn(code, errors.MESSAGES, f"client _HEAD_ERRORS {status}")
            line = str(errors.node_error("download", status, b"", {}))
            self.assertTrue(line.endswith(f": {errors.MESSAGES[code]}"), line)
