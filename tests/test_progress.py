"""Progress of downloads and of the live apply: a bar on a terminal, plain lines elsewhere.

The packages come over HTTP from a server on loopback (a file:// repository is not downloaded,
so dnf reports no progress for it); the terminal is a real pseudo-terminal.
"""

from __future__ import annotations

import functools
import http.server
import os
import pty
import re
import select
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fixtures import build as fixture_build
from tests.helpers import LIVE_FLAGS, booted, cli_argv, describe, lulayer, wait_unlocked

pytestmark = pytest.mark.root
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but \t and \n


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_repo(fixture_repo: Path) -> Iterator[str]:
    """The fixture repository served on 127.0.0.1; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(fixture_repo))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def over_http(sysroot: Path, url: str) -> Path:
    f = booted(sysroot) / fixture_build.REPO_FILE
    f.write_text("".join(f"baseurl={url}\n" if ln.startswith("baseurl=") else ln + "\n"
                         for ln in f.read_text().splitlines()))
    return sysroot


def on_a_terminal(sysroot: Path, *args: str) -> tuple[int, str]:
    """Run lulayer with its stderr on a pseudo-terminal; return the exit code and what it drew there."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(cli_argv(sysroot, *args), stdout=subprocess.DEVNULL, stderr=slave,
                            env=dict(os.environ, LC_ALL="C", COLUMNS="100"))
    os.close(slave)
    drawn = b""
    while True:
        ready, _, _ = select.select([master], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    rc = proc.wait(timeout=120)
    if LIVE_FLAGS.intersection(args):
        wait_unlocked(sysroot)
    return rc, drawn.decode(errors="replace")


def test_off_a_terminal_progress_is_plain_lines(make_sysroot: Callable[..., Path], http_repo: str) -> None:
    sysroot = over_http(make_sysroot(), http_repo)
    proc = lulayer(sysroot, "install", "htop", "--live")
    assert not CONTROL.search(proc.stderr), repr(proc.stderr)
    lines = proc.stderr.splitlines()
    download = [ln for ln in lines if ln.startswith("Downloading packages: ")]
    assert len(download) == 1 and re.fullmatch(r"Downloading packages: 2/2, [0-9.]+ KiB/[0-9.]+ KiB", download[0]), \
        describe(proc)
    size = download[0].rsplit(", ", 1)[1].split("/")
    assert size[0] == size[1]  # every byte there
    assert "Applying live: 5/5, 402 B" in lines, describe(proc)


def test_on_a_terminal_progress_is_a_bar(make_sysroot: Callable[..., Path], http_repo: str) -> None:
    sysroot = over_http(make_sysroot(), http_repo)
    rc, drawn = on_a_terminal(sysroot, "install", "htop", "--live")
    assert rc == 0, drawn
    assert "\r\x1b[K" in drawn, repr(drawn)  # redrawn in place
    finals = [ln.rsplit("\r\x1b[K", 1)[-1] for ln in drawn.replace("\r\n", "\n").split("\n")]
    assert any(re.fullmatch(r"Downloading packages \[#{24}\] 2/2, [0-9.]+ KiB/[0-9.]+ KiB", ln) for ln in finals), \
        repr(drawn)
    assert "Applying live [########################] 5/5, 402 B" in finals, repr(drawn)
