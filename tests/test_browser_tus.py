"""
The page's resumable uploads (tus) in headless Chromium: the network taken
away mid-upload (DevTools' offline mode) and given back, the upload goes on
by itself from where the node stopped; and after a reload, the same file
picked again is offered to resume.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.support import funded_token, start_node
from tests.test_browser import Browser, BrowserCase, balance_of, open_page
from tests.test_cli import expected_upload

CREDIT = 10**9
SIZE = 10 * 2**20  # over the 8 MiB from which the page uploads through tus
RATE = 2_000_000  # bytes/s the browser sends at: about 5 s for the file
# The progress: its label, its text and the bar's value.
PROGRESS = """
return [document.getElementById('progress-label').textContent,
        document.getElementById('progress-text').textContent,
        document.getElementById('upload-progress').value];
"""


def network(b: Browser, *, offline: bool) -> None:
    b.cdp(
        "Network.emulateNetworkConditions",
        offline=offline,
        latency=0,
        downloadThroughput=-1,
        uploadThroughput=RATE,
    )


class ResumableInBrowserTests(BrowserCase):
    async def start(self) -> tuple[object, str, Browser, bytes, Path]:
        node = await start_node(self)
        token = await funded_token(node, CREDIT)
        b = await self.browser()
        data = os.urandom(SIZE)
        source = Path(self.mktemp()).resolve()
        source.mkdir()
        (source / "film.mp4").write_bytes(data)
        return node, token, b, data, source / "film.mp4"

    def page_with_token(self, b: Browser, node_url: str, token: str) -> None:
        open_page(b, node_url + "/")
        b.js("localStorage.setItem('metadisk.token', arguments[0])", token)
        open_page(b, node_url + "/")
        b.until(lambda: b.text("balance-exact") == f"{CREDIT:,} bytes", "the balance")

    async def test_offline_mid_upload_resumes_by_itself(self) -> None:
        node, token, b, data, path = await self.start()

        def upload() -> tuple[list, list, str, str]:
            self.page_with_token(b, node.url, token)
            b.el("file-input").send_keys(str(path))
            b.until(lambda: b.visible("selected"), "the chosen file")
            b.cdp("Network.enable")
            network(b, offline=False)
            b.el("upload-button").click()
            b.until(lambda: b.js(PROGRESS)[2] >= 30, "a third of the upload")
            network(b, offline=True)
            offline = b.until(
                lambda: (p := b.js(PROGRESS))[0] == "Reconnecting…" and p, "the cut to show"
            )
            b.screenshot("10-desktop-upload-offline.png")
            network(b, offline=False)
            # Resumed, and well on its way again (its speed shown).
            resumed = b.until(
                lambda: (
                    (p := b.js(PROGRESS))[0] == "Uploading"
                    and "resumed at" in p[1]
                    and p[2] >= 55
                    and p
                ),
                "the upload to go on",
            )
            b.screenshot("11-desktop-upload-resumed.png")
            b.until(lambda: b.visible("upload-result"), "the upload's result")
            stored = b.js(
                "return Object.keys(localStorage).filter(k => k.startsWith('metadisk.tus:'))"
            )
            assert stored == [], stored  # nothing left to resume
            return offline, resumed, b.value("result-filehash"), b.value("result-key")

        offline, resumed, filehash, key = await self.do(upload)
        self.assertRegex(
            offline[1], r"^The connection broke after [\d.]+ MiB of 10 MiB\. Trying again"
        )
        self.assertRegex(resumed[1], r"^[\d.]+ MiB of 10 MiB · .+ · resumed at [\d.]+ (KiB|MiB)$")
        self.assertNotIn("resumed at 0 B", resumed[1])  # it went on, not from the start
        self.assertEqual((filehash, key), expected_upload(data))
        self.assertEqual(await balance_of(node, token), CREDIT - 4 * SIZE)  # charged once

    async def test_after_a_reload_the_same_file_resumes(self) -> None:
        node, token, b, data, path = await self.start()

        def reload_and_resume() -> tuple[str, str, str]:
            self.page_with_token(b, node.url, token)
            b.el("file-input").send_keys(str(path))
            b.until(lambda: b.visible("selected"), "the chosen file")
            b.cdp("Network.enable")
            network(b, offline=False)
            b.el("upload-button").click()
            b.until(lambda: b.js(PROGRESS)[2] >= 40, "part of the upload")
            b.driver.get(node.url + "/")  # the tab reloaded mid-upload
            b.until(lambda: b.text("balance-exact") not in ("", "…"), "the page")
            b.el("file-input").send_keys(str(path))
            note = b.until(lambda: b.visible("resume-note") and b.text("resume-note"), "the offer")
            button = b.text("upload-button")
            b.screenshot("12-desktop-resume-offer.png")
            network(b, offline=False)
            b.el("upload-button").click()
            b.until(lambda: b.visible("upload-result"), "the upload's result")
            return note, button, b.value("result-key")

        note, button, key = await self.do(reload_and_resume)
        self.assertRegex(
            note, r"^An earlier upload of this file stopped at [\d.]+ MiB of 10 MiB \(\d+%\)\."
        )
        self.assertEqual(button, "Resume upload")
        self.assertEqual(key, expected_upload(data)[1])
        self.assertEqual(await balance_of(node, token), CREDIT - 4 * SIZE)
