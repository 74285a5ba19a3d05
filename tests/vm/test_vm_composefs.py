"""lulayer's live story on a booted host whose root is a composefs mount (issue 13, point 4).

The guest is Debian forky (tests/vm/image.py, ``COMPOSEFS``) on today's host configuration
(``HostConfig.TODAY``: container-image origin, read-only /sysroot): its ostree is built with
composefs, its prepare-root.conf says ``[composefs] enabled = yes``, so ``/`` is an
overlay of an erofs image whose file data comes from the repository's objects, and
``/usr`` is no bind mount of the deployment's checkout, as on Silverblue 41 and later.
One test, three boots: the live story, the reboot into lulayer's deployment, the rollback.
Run with ``flock /work/vm.lock ./dev test -m vm -k composefs``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vm import image as vm_image
from tests.vm.image import HostConfig
from tests.vm.runner import VM, Boot

pytestmark = [pytest.mark.vm]

# How the root is mounted, and what shows that it is composefs; run in every boot.
EVIDENCE = """
step root findmnt -n -o SOURCE,FSTYPE,OPTIONS /
step usr-mount findmnt -n -o TARGET,SOURCE,FSTYPE,OPTIONS /usr
step sysroot-mount findmnt -n -o SOURCE,FSTYPE,OPTIONS /sysroot
step cmdline cat /proc/cmdline
step ostree-status ostree admin status
step cfs-image sh -c 'ls /sysroot/ostree/deploy/debian/deploy/$(ostree admin status --print-current-dir \
    | xargs basename)/.ostree.cfs'
"""


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VM]:
    machine = VM(tmp_path / "vm", config=HostConfig.TODAY, image_dir=vm_image.image(vm_image.COMPOSEFS))
    yield machine
    machine.disk.unlink(missing_ok=True)


def _deployments(boot: Boot, step: str) -> list[dict[str, object]]:
    deps: list[dict[str, object]] = json.loads(boot.ok(step))["deployments"]
    return deps


def _booted(boot: Boot, step: str) -> dict[str, object]:
    booted = [d for d in _deployments(boot, step) if d["booted"]]
    assert len(booted) == 1, f"boot {boot.number}: booted deployments {booted}"
    return booted[0]


def _assert_composefs_root(boot: Boot) -> None:
    """/ is ostree's composefs overlay, /usr is no mount of its own, the deployment has its image."""
    source, fstype, options = boot.ok("root").split()
    assert (source, fstype) == ("composefs", "overlay"), boot.ok("root")
    assert "ro" in options.split(","), options
    boot.failed("usr-mount")  # not a mount point: no bind mount of the checkout's /usr
    assert "ro" in boot.ok("sysroot-mount").split()[-1].split(","), boot.ok("sysroot-mount")
    boot.ok("cfs-image")
    print(f"--- boot {boot.number}: composefs evidence")
    for step in ("root", "sysroot-mount", "cmdline", "ostree-status", "cfs-image"):
        print(f"$ {step}\n{boot.ok(step).rstrip()}")


def test_live_story_on_a_composefs_root(vm: VM) -> None:
    b1 = vm.boot(EVIDENCE + """
step features ostree --version
step status lulayer status
step base lulayer status --json
step install lulayer install htop --live
step which sh -c 'command -v htop'
step htop htop --version
step rpm-q rpm -q htop
step live-usr findmnt -n -o SOURCE,FSTYPE,OPTIONS /usr
step touch-usr touch /usr/x
step checkout-untouched sh -c 'test ! -e "$(ostree admin status --print-current-dir)/usr/bin/htop"'
step uninstall lulayer uninstall htop --live
step which-gone sh -c 'command -v htop'
step rpm-q-gone rpm -q htop
step reinstall lulayer install htop hello-service --live
step settle lulayer finalize
step json lulayer status --json
""")
    _assert_composefs_root(b1)
    assert "- composefs" in b1.ok("features"), b1.ok("features")
    assert f"● {HostConfig.TODAY.origin_line} (booted)" in b1.ok("status"), b1.ok("status")
    base = _booted(b1, "base")
    assert "Live added: htop-3.3.0-1.fc41.x86_64" in b1.ok("install"), b1.ok("install")
    assert b1.ok("which").strip() == "/usr/bin/htop"
    assert "htop 3.3.0" in b1.ok("htop")
    assert b1.ok("rpm-q").strip() == "htop-3.3.0-1.fc41.x86_64"
    # lulayer's overlay sits on the composefs /usr (lowest layer: /usr itself), read-only between applies; the
    # first live update of the boot is the layer of repository links above it (apply/live.py _apply_as_layer).
    _source, fstype, options = b1.ok("live-usr").split()
    lower = next(o for o in options.split(",") if o.startswith("lowerdir=")).removeprefix("lowerdir=").split(":")
    assert fstype == "overlay" and "ro" in options.split(","), b1.ok("live-usr")
    assert len(lower) == 2 and lower[0].endswith("/lulayer-live/layer") and lower[1] == "/usr", b1.ok("live-usr")
    assert "Read-only file system" in b1.failed("touch-usr")
    b1.ok("checkout-untouched")
    assert "Live removed: htop-3.3.0-1.fc41.x86_64" in b1.ok("uninstall"), b1.ok("uninstall")
    b1.failed("which-gone")
    assert "not installed" in b1.failed("rpm-q-gone")
    b1.ok("reinstall")
    b1.ok("settle")
    pending = _deployments(b1, "json")[0]
    assert pending["lulayer-pending"] and pending["requested-packages"] == ["hello-service", "htop"], pending

    b2 = vm.boot(EVIDENCE + """
step json lulayer status --json
step htop htop --version
step rpm-q rpm -q htop hello-service
step rollback lulayer rollback
step after lulayer status --json
""")
    _assert_composefs_root(b2)  # lulayer's deployment has its composefs image and boots from it
    booted = _booted(b2, "json")
    assert booted["checksum"] == pending["checksum"], (booted, pending)
    assert booted["requested-packages"] == ["hello-service", "htop"], booted
    assert "live-replaced" not in booted and "live-inprogress" not in booted, booted
    assert "htop 3.3.0" in b2.ok("htop")
    b2.ok("rpm-q")
    b2.ok("rollback")
    after = _deployments(b2, "after")
    assert after[0]["checksum"] == base["checksum"] and not after[0]["booted"], after

    b3 = vm.boot(EVIDENCE + """
step json lulayer status --json
step which sh -c 'command -v htop'
step rpm-q rpm -q htop
""")
    _assert_composefs_root(b3)
    assert _booted(b3, "json")["checksum"] == base["checksum"]
    b3.failed("which")
    b3.failed("rpm-q")
