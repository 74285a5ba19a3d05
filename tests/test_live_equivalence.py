"""The next boot after live applies equals the same changes made without --live (issue 19).

One sequence, on two fresh sysroots, one with --live and one without: install packages with
config files and a scriptlet that writes to /etc, an administrator's edit, an upgrade that
ships new config files, uninstalls. After each reboot the two booted /etc trees, and what
`rpm -Va` says, are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures import build as fixture_build
from tests.helpers import booted, lulayer, point_repo_file, rpm, tree_snapshot

pytestmark = pytest.mark.root

# Per boot, not per change: the machine id and the like; lulayer's own run state.
VOLATILE = ("machine-id",)


def etc_tree(root: Path) -> dict[str, tuple[object, ...]]:
    return tree_snapshot(root / "etc", skip=VOLATILE)


def verify_all(root: Path) -> list[str]:
    """`rpm -Va` without mtimes (an OSTree checkout has mtime 0), sorted."""
    out = rpm(root, "-Va", "--nomtime").stdout
    return sorted(line for line in out.splitlines() if line.strip())


def test_live_and_reboot_sequences_end_equal(make_sysroot: Callable[..., Path], tmp_path: Path) -> None:
    live_sr, plain_sr = make_sysroot(), make_sysroot()
    repo2 = fixture_build.make_repo(tmp_path / "repo2", [*fixture_build.default_repo_packages(),
                                                         fixture_build.rpm_path("cfgpkg", "2.0")])

    def step(*args: str) -> None:
        # postscript's %post appends to /etc/shells, a file of the base: replaced live.
        lulayer(live_sr, *args, "--live", "--allow-replacement")
        lulayer(plain_sr, *args)
        roots = fixture_build.reboot(live_sr), fixture_build.reboot(plain_sr)
        got, want = etc_tree(roots[0]), etc_tree(roots[1])
        diff = sorted(k for k in got.keys() | want.keys() if got.get(k) != want.get(k))
        assert not diff, f"after {' '.join(args)}: /etc differs at {diff}"
        assert verify_all(roots[0]) == verify_all(roots[1]), f"after {' '.join(args)}"

    step("install", "cfgpkg", "hello-config", "postscript")
    for sr in (live_sr, plain_sr):  # the administrator's edit, on both
        (booted(sr) / "etc/hello/hello.conf").write_text("greeting=mine\n")
        point_repo_file(booted(sr), repo2)
    step("upgrade")
    step("uninstall", "cfgpkg")
    step("uninstall", "hello-config", "postscript")
    for sr in (live_sr, plain_sr):
        etc = booted(sr) / "etc"
        assert not (etc / "cfgpkg.conf").exists() and not (etc / "cfgpkg-post.conf").exists()
        assert (etc / "hello/hello.conf").read_text() == "greeting=mine\n", "the administrator's edit is kept"
    # Without any reboot between the live commands, the next boot is the same too.
    step("install", "cfgpkg")
    lulayer(live_sr, "uninstall", "cfgpkg", "--live")
    lulayer(live_sr, "install", "cfgpkg", "hello-config", "--live", "--allow-replacement")
    lulayer(plain_sr, "uninstall", "cfgpkg")
    lulayer(plain_sr, "install", "cfgpkg", "hello-config")
    roots = fixture_build.reboot(live_sr), fixture_build.reboot(plain_sr)
    assert etc_tree(roots[0]) == etc_tree(roots[1])
    assert verify_all(roots[0]) == verify_all(roots[1])
