"""
The MetaDisk page, served by the node, in a real browser: Debian's headless
Chromium driven by Selenium through chromedriver. The browser is driven from a
worker thread (Selenium blocks) while the node runs on the reactor.

Each screen is saved under test-artifacts/ at the root of the repository.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from twisted.internet import reactor, threads
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web import resource, server

from metadisk.web.page import WebPage
from metadisk.web.upload import UploadReceiver
from tests.support import json_of, start_node, test_config

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
WAIT = 30.0  # seconds: the bound on every wait for the page
DESKTOP = (1280, 900)
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
CLIPBOARD = ["clipboardReadWrite", "clipboardSanitizedWrite"]
READ_CLIPBOARD = "navigator.clipboard.readText().then(arguments[0], e => arguments[0](String(e)))"
# The progress text while the bar is between 35 % and 99 %, else null.
UPLOAD_UNDER_WAY = """
const bar = document.getElementById('upload-progress');
const uploading = document.getElementById('progress-label').textContent === 'Uploading';
return uploading && bar.value >= 35 && bar.value < 100
  ? document.getElementById('progress-text').textContent : null;
"""
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--lang=en-US",
)


def browser_missing() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r requirements-test.txt)"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install {package})"
    return None


def require_browser(case: TestCase) -> None:
    reason = browser_missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        case.fail(f"the browser test must run in CI, but {reason}")
    raise SkipTest(reason)


class Browser:
    """A headless Chromium: blocking calls, to be made from a worker thread."""

    def __init__(self, base: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        self.downloads = base / "downloads"
        self.downloads.mkdir(parents=True)
        options = Options()
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={base / 'profile'}")
        options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
        options.add_experimental_option(
            "prefs",
            {
                "download.default_directory": str(self.downloads),
                "download.prompt_for_download": False,
                "safebrowsing.enabled": False,
            },
        )
        # A given chromedriver: Selenium Manager never runs, nothing is downloaded.
        service = Service(executable_path=CHROMEDRIVER, log_output=str(base / "chromedriver.log"))
        self.driver = webdriver.Chrome(options=options, service=service)
        self.driver.set_page_load_timeout(WAIT)
        self.cdp("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(self.downloads))

    def quit(self) -> None:
        self.driver.quit()

    def cdp(self, command: str, **params: Any) -> Any:
        return self.driver.execute_cdp_cmd(command, params)

    def until(self, condition: Callable[[], Any], what: str) -> Any:
        """Wait (bounded) until C{condition()} is true; its value."""
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, WAIT, poll_frequency=0.05).until(
            lambda _: condition(), message=f"waited {WAIT:g} s for {what}"
        )

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def el(self, element_id: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id)

    def text(self, element_id: str) -> str:
        return self.js("return document.getElementById(arguments[0]).textContent", element_id)

    def value(self, element_id: str) -> str:
        return self.el(element_id).get_attribute("value")

    def visible(self, element_id: str) -> bool:
        return self.el(element_id).is_displayed()

    def type_into(self, element_id: str, text: str) -> None:
        field = self.el(element_id)
        field.clear()
        field.send_keys(text)

    def message(self, element_id: str, kind: str) -> str:
        """Wait for a message of this kind in this element; its text."""
        self.until(
            lambda: (
                self.visible(element_id)
                and kind in self.el(element_id).get_attribute("class").split()
            ),
            f"a message ({kind}) in #{element_id}",
        )
        return self.text(element_id)

    def screenshot(self, name: str) -> Path:
        """The whole page (not only the window) as test-artifacts/NAME."""
        ARTIFACTS.mkdir(exist_ok=True)
        size = self.cdp("Page.getLayoutMetrics")["cssContentSize"]
        shot = self.cdp(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        )
        path = ARTIFACTS / name
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def downloaded(self, name: str, size: int) -> bytes:
        """Wait for a finished download of C{size} bytes named C{name}; its bytes."""
        path = self.downloads / name

        def done() -> bool:
            partial = any(p.suffix == ".crdownload" for p in self.downloads.iterdir())
            return not partial and path.exists() and path.stat().st_size == size

        self.until(done, f"the download of {name}")
        return path.read_bytes()


class BrowserCase(TestCase):
    timeout = 240  # a loaded 2-core machine starts Chromium slowly

    def setUp(self) -> None:
        require_browser(self)

    async def browser(self) -> Browser:
        base = Path(self.mktemp()).resolve()
        browser = await threads.deferToThread(Browser, base)
        self.addCleanup(threads.deferToThread, browser.quit)
        return browser

    def record_parts(self) -> list[str | None]:
        """The names of the multipart parts the node will receive, in the order they arrive."""
        parts: list[str | None] = []
        start_part = UploadReceiver._start_part

        def spy(receiver: UploadReceiver, segment: Any) -> None:
            parts.append(segment.name)
            start_part(receiver, segment)

        self.patch(UploadReceiver, "_start_part", spy)
        return parts

    async def do(self, step: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking browser step in a worker thread; the node goes on serving."""
        return await threads.deferToThread(step, *args)


async def deposit(node: Any, token: str, amount: int) -> None:
    response = await node.http.post(
        node.url + f"/accounts/token/deposit/{token}",
        json={"bytes": amount},
        headers={b"Authentication": [node.secret.encode()]},
    )
    assert response.code == 200, response.code


async def balance_of(node: Any, token: str) -> int:
    response = await node.http.get(node.url + f"/accounts/token/balance/{token}")
    return (await json_of(response))["balance"]


def open_page(b: Browser, url: str) -> None:
    b.driver.get(url)
    b.until(lambda: b.el("node-state").get_attribute("data-state") == "online", "the status")
    b.until(lambda: b.js("return document.body.dataset.accounts"), "the prices")


class PageInBrowserTests(BrowserCase):
    async def test_token_upload_find_download(self) -> None:
        """
        The whole journey on a desktop: create a token, credit arrives, a
        promocode, an upload with its progress, the result, the share link,
        find and download (the bytes compared), errors; then a phone.
        """
        node = await start_node(self)
        await node.node.ledger.add_promocode("WELCOME", 5 * 2**20)
        b = await self.browser()
        parts = self.record_parts()

        # First visit: no token yet, the node's status and prices.
        def first_visit() -> str:
            b.cdp("Browser.grantPermissions", permissions=CLIPBOARD, origin=node.url)
            open_page(b, node.url + "/")
            assert b.visible("token-new")
            assert "64 MiB" in b.text("storage-text"), b.text("storage-text")
            assert b.text("max-size") == "16 MiB"
            assert "10 GiB" in b.text("prices-body")
            b.screenshot("01-desktop-first-visit.png")
            b.el("token-new").click()
            b.until(lambda: b.value("token-value"), "a new token")
            b.until(lambda: b.text("balance") == "0 B", "the new token's balance")
            return b.value("token-value")

        token = await self.do(first_visit)
        self.assertRegex(token, r"^[A-Za-z0-9]{16}$")
        self.assertEqual(await balance_of(node, token), 0)

        await deposit(node, token, 100_000_000)

        def credit() -> tuple[str, str]:
            stored = b.js("return localStorage.getItem('metadisk.token')")
            assert stored == token, stored
            b.el("balance-refresh").click()
            b.until(lambda: b.text("balance-exact") == "100,000,000 bytes", "the deposit")
            b.type_into("promocode", "NO-SUCH-CODE")
            b.el("promocode").submit()
            refused = b.message("token-message", "error")
            b.type_into("promocode", "WELCOME")
            b.el("promocode").submit()
            redeemed = b.message("token-message", "ok")
            b.until(lambda: b.text("balance-exact") == "105,242,880 bytes", "the promocode")
            b.screenshot("02-desktop-token.png")
            return refused, redeemed

        refused, redeemed = await self.do(credit)
        self.assertIn("promocode is unknown", refused)
        self.assertIn("+5 MiB", redeemed)
        self.assertEqual(await balance_of(node, token), 105_242_880)

        # The upload, slowed by the browser's own network throttle so that its progress shows.
        data = os.urandom(3 * 2**20 + 12345)
        source = Path(self.mktemp()).resolve()
        source.mkdir()
        name = "holiday photos.jpg"
        (source / name).write_bytes(data)

        def upload() -> tuple[str, str, str]:
            b.el("file-input").send_keys(str(source / name))
            b.until(lambda: b.visible("selected"), "the chosen file")
            meta = b.text("selected-meta")
            assert meta == "3.01 MiB · costs 12 MiB of credit", meta
            b.cdp("Network.enable")  # the throttle needs it
            b.cdp(
                "Network.emulateNetworkConditions",
                offline=False,
                latency=0,
                downloadThroughput=-1,
                uploadThroughput=600_000,  # bytes/s: about 5 s for this file
            )
            b.el("upload-button").click()
            during = b.until(lambda: b.js(UPLOAD_UNDER_WAY), "the upload's progress")
            b.screenshot("03-desktop-uploading.png")
            b.until(lambda: b.visible("upload-result"), "the upload's result")
            b.cdp(
                "Network.emulateNetworkConditions",
                offline=False,
                latency=0,
                downloadThroughput=-1,
                uploadThroughput=-1,
            )
            b.until(lambda: b.text("balance-exact") != "105,242,880 bytes", "the charge")
            b.driver.find_element("css selector", '[data-copy="result-key"]').click()
            key = b.value("result-key")
            b.until(lambda: b.driver.execute_async_script(READ_CLIPBOARD) == key, "the copy")
            b.screenshot("04-desktop-uploaded.png")
            return during, b.value("result-filehash"), key

        during, filehash, key = await self.do(upload)
        self.assertRegex(
            during, r"^[\d.]+ (B|KiB|MiB) of 3\.01 MiB · [\d.]+ (B|KiB|MiB)/s · .+ left$"
        )
        self.assertRegex(filehash, r"^[0-9a-f]{64}$")
        self.assertRegex(key, r"^[0-9a-f]{64}$")
        self.assertEqual(parts, ["token", "file"])  # the payer is known before the file's bytes
        self.assertEqual(await balance_of(node, token), 105_242_880 - 4 * len(data))
        record = await json_of(await node.http.get(node.url + f"/api/find/{filehash}"))
        self.assertEqual(record["filesize"], len(data))
        await node.node.sync.idle()  # on its hosts: the page reads them once, as it opens

        # The download link carries both; it opens the page on the file, which downloads it.
        def download() -> tuple[str, bytes]:
            link = b.value("result-link")
            assert link == f"{node.url}/#file={filehash}&key={key}", link
            b.driver.get(link)
            b.until(lambda: b.visible("record"), "the find record")
            assert b.value("find-filehash") == filehash and b.value("find-key") == key
            assert b.text("record-name") == f"{filehash[:7]}_{name}"
            assert b.text("record-size").startswith("3.01 MiB")
            b.until(lambda: "local" in b.text("record-hosts"), "the hosts")
            b.el("download-button").click()
            saved = b.downloaded(f"{filehash[:7]}_{name}", len(data))
            said = b.message("download-message", "ok")
            b.screenshot("05-desktop-downloaded.png")
            return said, saved

        said, saved = await self.do(download)
        self.assertIn(f"Downloading {filehash[:7]}_{name} (3.01 MiB)", said)
        self.assertEqual(saved, data)

        # Errors are sentences, on the page.
        def errors() -> list[str]:
            seen = []
            b.type_into("find-filehash", "0" * 64)
            b.el("find-filehash").submit()  # Enter in the form: keyboard use
            seen.append(b.message("download-message", "error"))
            b.type_into("find-filehash", filehash)
            b.type_into("find-key", "not a key")
            b.el("download-button").click()
            seen.append(b.message("download-message", "error"))
            b.type_into("find-filehash", "f" * 64)
            b.type_into("find-key", "0" * 64)
            b.el("download-button").click()
            seen.append(b.message("download-message", "error"))
            b.screenshot("06-desktop-error.png")
            dark = [{"name": "prefers-color-scheme", "value": "dark"}]
            b.cdp("Emulation.setEmulatedMedia", features=dark)
            b.screenshot("09-desktop-dark.png")
            b.cdp("Emulation.setEmulatedMedia", features=[])
            return seen

        seen = await self.do(errors)
        self.assertEqual(
            seen,
            [
                "No file with this filehash is known to this node.",
                "That is not a key: it has 64 hexadecimal digits (0-9, a-f).",
                "No file with this filehash is known to this node.",
            ],
        )

        # The same page on a phone: one column, nothing wider than the screen.
        def phone() -> tuple[int, int]:
            b.cdp("Emulation.setDeviceMetricsOverride", **PHONE)
            b.driver.get(node.url + "/")
            b.until(lambda: b.el("node-state").get_attribute("data-state") == "online", "status")
            b.until(lambda: b.text("balance") not in ("…", ""), "the balance")
            widths = b.js("return [document.documentElement.scrollWidth, window.innerWidth]")
            b.screenshot("07-phone-full.png")
            b.driver.save_screenshot(str(ARTIFACTS / "08-phone-first-screen.png"))
            b.cdp("Emulation.clearDeviceMetricsOverride")
            return widths

        scroll_width, screen_width = await self.do(phone)
        self.assertLessEqual(scroll_width, screen_width)

    async def test_upload_refused_before_sending(self) -> None:
        """
        A dropped file, without a token and then without credit: refused with a
        sentence, and nothing is sent.
        """
        node = await start_node(self)
        b = await self.browser()

        def broke() -> str:
            open_page(b, node.url + "/")
            # A file dropped on the zone, as a person would drag it there.
            b.js(
                """
                const dropped = new DataTransfer();
                dropped.items.add(new File([arguments[0]], 'notes.txt', {type: 'text/plain'}));
                const zone = document.getElementById('dropzone');
                for (const type of ['dragenter', 'dragover', 'drop']) {
                  zone.dispatchEvent(new DragEvent(type, {
                    dataTransfer: dropped, bubbles: true, cancelable: true}));
                }
                """,
                "hello, MetaDisk\n" * 100,
            )
            b.until(lambda: b.text("selected-name") == "notes.txt", "the dropped file")
            b.el("upload-button").click()
            needs_token = b.message("upload-message", "error")
            b.el("token-new").click()
            b.until(lambda: b.text("balance") == "0 B", "the new token")
            b.el("upload-button").click()
            b.until(lambda: "costs" in b.text("upload-message"), "the refusal")
            return needs_token + "\n" + b.message("upload-message", "error")

        said = await self.do(broke)
        self.assertEqual(
            said,
            "An access token pays for uploads: create one under “Access token” first.\n"
            "This upload costs 6.25 KiB of credit; the token has 0 B.",
        )
        status = await json_of(await node.http.get(node.url + "/api/status"))
        self.assertEqual(status["bandwidth"]["total"]["incoming"], 0)  # no upload began

    async def test_free_node(self) -> None:
        """With accounts disabled the page needs no token and sends none."""
        config = test_config(Path(self.mktemp()).resolve(), accounts={"enabled": False})
        node = await start_node(self, config)
        b = await self.browser()
        parts = self.record_parts()
        source = Path(self.mktemp()).resolve()
        source.mkdir()
        (source / "free.txt").write_bytes(b"free as in beer\n")

        def free() -> tuple[str, str]:
            open_page(b, node.url + "/")
            assert b.visible("token-disabled") and not b.visible("token-body")
            b.el("file-input").send_keys(str(source / "free.txt"))
            b.el("upload-button").click()
            b.until(lambda: b.visible("upload-result"), "the upload's result")
            return b.text("token-disabled"), b.value("result-filehash")

        said, filehash = await self.do(free)
        self.assertEqual(said, "This node does not charge for transfers: no token needed.")
        self.assertRegex(filehash, r"^[0-9a-f]{64}$")
        self.assertEqual(parts, ["file"])

    async def test_accessible_names_and_keyboard(self) -> None:
        """Every control has a name; the file picker and the forms are reached with Tab."""
        node = await start_node(self)
        b = await self.browser()

        def audit() -> tuple[list[str], list[str]]:
            open_page(b, node.url + "/")
            unnamed = b.js(
                """
                const missing = [];
                for (const el of document.querySelectorAll('input, button, select, textarea')) {
                  const named = (el.labels && el.labels.length) || el.getAttribute('aria-label')
                    || el.getAttribute('aria-labelledby') || (el.textContent || '').trim();
                  if (!named) missing.push(el.id || el.outerHTML.slice(0, 60));
                }
                return missing;
                """
            )
            from selenium.webdriver.common.action_chains import ActionChains
            from selenium.webdriver.common.keys import Keys

            reached = []
            for _ in range(12):
                ActionChains(b.driver).send_keys(Keys.TAB).perform()
                reached.append(b.js("return document.activeElement.id"))
            return unnamed, reached

        unnamed, reached = await self.do(audit)
        self.assertEqual(unnamed, [])
        self.assertIn("file-input", reached)
        self.assertIn("find-filehash", reached)
        self.assertIn("token-new", reached)


class CrossOriginPageTests(BrowserCase):
    """The page hosted elsewhere talks to a node that allows its origin (CORS)."""

    def _page_server(self) -> tuple[_PageResource, str]:
        """A web server of the page's files on another origin; its URL."""
        hosted = _PageResource()
        port = reactor.listenTCP(0, server.Site(hosted), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return hosted, f"http://127.0.0.1:{port.getHost().port}"

    async def test_allowed_origin(self) -> None:
        """Status, a new token and a promocode (a preflighted JSON POST) across origins."""
        hosted, page_url = self._page_server()
        config = test_config(Path(self.mktemp()).resolve(), node={"cors_origins": [page_url]})
        node = await start_node(self, config)
        hosted.page = _page_for(node.url)
        await node.node.ledger.add_promocode("CORS", 1000)
        b = await self.browser()

        def cross_origin() -> tuple[str, str]:
            open_page(b, page_url + "/")
            b.el("token-new").click()
            b.until(lambda: b.text("balance") == "0 B", "a token from the node")
            b.type_into("promocode", "CORS")
            b.el("promocode").submit()  # a JSON POST: preflighted
            b.message("token-message", "ok")
            b.until(lambda: b.text("balance-exact") == "1,000 bytes", "the promocode")
            return b.value("token-value"), b.js("return location.origin")

        token, origin = await self.do(cross_origin)
        self.assertEqual(origin, page_url)
        self.assertEqual(await balance_of(node, token), 1000)

    async def test_origin_not_allowed(self) -> None:
        """A node that does not allow the page's origin: the page says it cannot reach it."""
        hosted, page_url = self._page_server()
        node = await start_node(self)  # no cors_origins: same origin only
        hosted.page = _page_for(node.url)
        b = await self.browser()

        def refused() -> str:
            b.driver.get(page_url + "/")
            b.until(lambda: b.el("node-state").get_attribute("data-state") == "offline", "refusal")
            return b.message("status-message", "error")

        said = await self.do(refused)
        self.assertIn("Could not reach the node", said)


def _static() -> Any:
    """The page's files as the node has them (the installed package's)."""
    return resources.files("metadisk.web") / "static"


def _page_for(node_url: str) -> WebPage:
    """The page's files, set to talk to the node at C{node_url}."""
    files = {path.name: path.read_bytes() for path in _static().iterdir()}
    files["index.html"] = files["index.html"].replace(
        b'<meta name="metadisk-node" content="">',
        f'<meta name="metadisk-node" content="{node_url}">'.encode(),
    )
    return WebPage.of_files(files)


class _PageResource(resource.Resource):
    """A plain web server of the page's files: the page hosted somewhere else."""

    isLeaf = True
    page: WebPage | None = None

    def render(self, request: Any) -> bytes:
        if self.page is None or not self.page.handles(request):
            request.setResponseCode(404)
            return b"not here"
        body = self.page.render(request)
        # This server sends no Content-Security-Policy: the page may talk to another origin.
        request.responseHeaders.removeHeader(b"content-security-policy")
        return body


class PageServingTests(TestCase):
    """The node serves the page's files with their types, validators and caching rules."""

    async def test_index_and_assets(self) -> None:
        node = await start_node(self)
        index = await node.http.get(node.url + "/")
        self.assertEqual(index.code, 200)
        headers = index.headers
        self.assertEqual(headers.getRawHeaders("content-type"), ["text/html; charset=utf-8"])
        self.assertEqual(headers.getRawHeaders("cache-control"), ["no-cache"])
        self.assertIn("default-src 'self'", headers.getRawHeaders("content-security-policy")[0])
        self.assertEqual(headers.getRawHeaders("x-content-type-options"), ["nosniff"])
        raw = await index.content()
        html = raw.decode()
        # Nothing from elsewhere: every src/href is relative to the node or a fragment.
        for target in re.findall(r'(?:src|href)="([^"]*)"', html):
            self.assertNotRegex(target, r"^(https?:)?//", target)
        versions = dict(re.findall(r'"(app\.(?:css|js)|favicon\.svg)\?v=([0-9a-f]{16})"', html))
        self.assertEqual(set(versions), {"app.css", "app.js", "favicon.svg"})

        for name, content_type in [
            ("app.js", "text/javascript; charset=utf-8"),
            ("app.css", "text/css; charset=utf-8"),
            ("favicon.svg", "image/svg+xml"),
        ]:
            versioned = await node.http.get(node.url + f"/{name}?v={versions[name]}")
            self.assertEqual(versioned.code, 200)
            self.assertEqual(versioned.headers.getRawHeaders("content-type"), [content_type])
            self.assertEqual(
                versioned.headers.getRawHeaders("cache-control"),
                ["public, max-age=31536000, immutable"],
            )
            body = await versioned.content()
            self.assertEqual(body, (_static() / name).read_bytes())
            etag = versioned.headers.getRawHeaders("etag")[0]
            self.assertEqual(etag, f'"{versions[name]}"')
            plain = await node.http.get(node.url + f"/{name}")
            self.assertEqual(plain.headers.getRawHeaders("cache-control"), ["no-cache"])
            await plain.content()
            again = await node.http.get(node.url + f"/{name}", headers={"If-None-Match": etag})
            self.assertEqual(again.code, 304)
            self.assertEqual(await again.content(), b"")

        head = await node.http.head(node.url + "/")
        self.assertEqual(head.code, 200)
        self.assertEqual(head.headers.getRawHeaders("content-length"), [str(len(raw))])

    async def test_unknown_routes_stay_json(self) -> None:
        node = await start_node(self)
        for method, path in [
            ("GET", "/nothing-here"),
            ("GET", "/static/app.js"),
            ("GET", "/app.js/more"),
            ("POST", "/nothing-here"),
        ]:
            response = await node.http.request(method, node.url + path)
            self.assertEqual(response.code, 404, (method, path))
            self.assertEqual(
                response.headers.getRawHeaders("content-type"), ["application/json"], path
            )
            self.assertEqual(json.loads(await response.content()), {"error": "not-found"})

    def test_page_files(self) -> None:
        """The package ships every file the page needs; the index asks only for those."""
        page = WebPage.from_package()
        self.assertEqual(
            set(page.assets),
            {"/", "/index.html", "/app.js", "/app.css", "/favicon.svg"},
        )
