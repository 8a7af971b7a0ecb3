"""
Fake plowshare 2.x tools (plowup, plowdown, plowprobe) for the tests: the same
arguments, output and exit codes as the real ones, with the sites kept in a
directory instead of on the Internet.

FAKE_PLOWSHARE_ROOT names that directory: ROOT/<module>/<id>/<name> is a file
stored on a site, reachable as http://<module>.example.net/<id>. A site
misbehaves when ROOT/<module>.mode holds a mode, on a line of its own for
every tool ("hang") or for one ("plowdown=partial"):

  network    exit 3 (ERR_NETWORK), curl's complaint on stderr
  captcha    exit 7 (ERR_CAPTCHA)
  hang       never answer; a child process hangs too (its pid in ROOT/hung.pids)
  garbage    exit 0 with output that holds no link or file name
  partial    plowdown: half the file written, then exit 3
  truncated  plowdown: half the file written, then exit 0 as if all went well
  dead       every link is dead: exit 13 (ERR_LINK_DEAD)
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

MODULES = ("rghost", "mega", "1fichier", "sendspace", "zippyshare")
ERR_NOMODULE = 2
ERR_NETWORK = 3
ERR_CAPTCHA = 7
ERR_SYSTEM = 8
ERR_LINK_DEAD = 13
ERR_BAD_COMMAND_LINE = 15
ERR_FATAL_MULTIPLE = 100
_URL = re.compile(r"https?://([a-z0-9]+)\.example\.net/([A-Za-z0-9]+)$")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def root() -> Path:
    value = os.environ.get("FAKE_PLOWSHARE_ROOT")
    if not value:
        log("fake plowshare: FAKE_PLOWSHARE_ROOT is not set")
        sys.exit(ERR_SYSTEM)
    return Path(value)


def mode(tool: str, module: str) -> str:
    try:
        lines = (root() / f"{module}.mode").read_text().split()
    except FileNotFoundError:
        return ""
    for line in lines:
        name, _, value = line.rpartition("=")
        if name in ("", tool):
            return value
    return ""


def misbehave(tool: str, module: str) -> None:
    """The failure modes every tool shares."""
    current = mode(tool, module)
    if current == "network":
        log(f"curl: (7) Failed to connect to {module}.example.net port 80: Connection refused")
        log(f"Failed inside {module}_{tool.removeprefix('plow')}() [{ERR_NETWORK}]")
        sys.exit(ERR_NETWORK)
    if current == "captcha":
        log(f"Error decoding captcha ({module}_{tool.removeprefix('plow')})")
        sys.exit(ERR_CAPTCHA)
    if current == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        with open(root() / "hung.pids", "a") as f:
            f.write(f"{os.getpid()} {child.pid}\n")
        time.sleep(3600)
    if current == "garbage":
        print("<html><head><title>502 Bad Gateway</title></head>")
        print("<body><center><h1>502 Bad Gateway</h1></center></body></html>")
        sys.exit(0)


def parse(argv: list[str], with_value: set[str]) -> tuple[dict[str, str], list[str]]:
    """plowshare's options: -x VALUE, -xVALUE, --long=VALUE, --long VALUE, flags."""
    options: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            if name in with_value and not eq:
                i += 1
                value = argv[i] if i < len(argv) else ""
            options[name] = value
        elif arg.startswith("-") and len(arg) > 1:
            name, value = arg[1], arg[2:]
            if name in with_value and not value:
                i += 1
                value = argv[i] if i < len(argv) else ""
            options[name] = value
        else:
            positional.append(arg)
        i += 1
    return options, positional


def finish(retvals: list[int]) -> None:
    if not retvals:
        sys.exit(0)
    if len(retvals) == 1:
        sys.exit(retvals[0])
    failed = [r for r in retvals if r]
    sys.exit(ERR_FATAL_MULTIPLE + failed[0] if failed else 0)


def located(url: str) -> tuple[str, Path] | None:
    """(module, folder of the stored file) of a link, or None if no module knows it."""
    match = _URL.match(url)
    if match is None or match.group(1) not in MODULES:
        return None
    return match.group(1), root() / match.group(1) / match.group(2)


def plowup() -> None:
    _, args = parse(sys.argv[1:], {"max-rate", "min-rate", "t", "timeout", "r", "name"})
    if not args:
        log("plowup: no module specified!")
        sys.exit(ERR_BAD_COMMAND_LINE)
    module = args[0].lower().replace(".", "_")
    if module not in MODULES:
        log(f"plowup: unsupported module ({args[0]})")
        sys.exit(ERR_NOMODULE)
    if len(args) < 2:
        log("plowup: you must specify a filename.")
        sys.exit(ERR_BAD_COMMAND_LINE)
    retvals = []
    for item in args[1:]:
        local, _, destination = item.partition(":")
        path = Path(local)
        # Like the real plowup, a file it cannot send is skipped, not an error.
        if path.is_dir():
            log(f"Skipping ({local}): directory")
            continue
        if not path.is_file():
            log(f"Skipping ({local}): cannot find file")
            continue
        if path.stat().st_size == 0:
            log(f"Skipping ({local}): filesize is null")
            continue
        name = os.path.basename(destination or local)
        log(f"Starting upload ({module}): {local}")
        log(f"Destination file: {name}")
        misbehave("plowup", module)
        ident = secrets.token_hex(6)
        folder = root() / module / ident
        folder.mkdir(parents=True)
        shutil.copyfile(path, folder / name)
        print(f"#DEL http://{module}.example.net/delete/{ident}/{secrets.token_hex(4)}")
        print(f"http://{module}.example.net/{ident}")
        retvals.append(0)
    finish(retvals)


def plowdown() -> None:
    options, urls = parse(
        sys.argv[1:],
        {"o", "output-directory", "t", "timeout", "r", "max-retries", "temp-directory", "printf"},
    )
    out_dir = options.get("o") or options.get("output-directory") or ""
    if not urls:
        log("plowdown: no URL specified!")
        sys.exit(ERR_BAD_COMMAND_LINE)
    retvals = []
    for url in urls:
        found = located(url)
        if found is None:
            log(f"Skip: no module for URL ({url})")
            retvals.append(ERR_NOMODULE)
            continue
        module, folder = found
        log(f"Starting download ({module}): {url}")
        misbehave("plowdown", module)
        files = sorted(folder.iterdir()) if folder.is_dir() else []
        if not files or mode("plowdown", module) == "dead":
            log("Link is not alive: file not found")
            retvals.append(ERR_LINK_DEAD)
            continue
        source = files[0]
        log(f"File URL: {url}/dl")
        log(f"Filename: {source.name}")
        target = os.path.join(out_dir, source.name) if out_dir else source.name
        data = source.read_bytes()
        current = mode("plowdown", module)
        if current in ("partial", "truncated"):
            with open(target, "wb") as f:
                f.write(data[: len(data) // 2])
            if current == "partial":
                log(
                    f"curl: (18) transfer closed with {len(data) - len(data) // 2} bytes"
                    " remaining to read"
                )
                retvals.append(ERR_NETWORK)
                continue
        else:
            shutil.copyfile(source, target)
        print(target)
        retvals.append(0)
    finish(retvals)


def plowprobe() -> None:
    _, urls = parse(sys.argv[1:], {"printf", "i", "interface"})
    if not urls:
        log("plowprobe: no URL specified!")
        sys.exit(ERR_BAD_COMMAND_LINE)
    retvals = []
    for url in urls:
        found = located(url)
        if found is None:
            log(f"Skip: no module for URL ({url})")
            retvals.append(ERR_NOMODULE)
            continue
        module, folder = found
        misbehave("plowprobe", module)
        files = sorted(folder.iterdir()) if folder.is_dir() else []
        if not files or mode("plowprobe", module) == "dead":
            log(f"Link is not alive: {url}")
            retvals.append(ERR_LINK_DEAD)
            continue
        print(f"# {files[0].name}")
        print(url)
        retvals.append(0)
    finish(retvals)
