"""Shell completion (click's): subcommands, options, and layered package names for `uninstall`.

Completion runs in a real bash with the script `lulayer` prints for it, as the README says to
install it. Package names come from the origin, read without root and without the sysroot lock.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import gi
import pytest

from fixtures import build as fixture_build
from tests.helpers import lulayer

gi.require_version("OSTree", "1.0")
from gi.repository import Gio, OSTree  # noqa: E402

LULAYER = Path(sys.executable).with_name("lulayer")  # the console script pip installed
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


def complete(words: str, *, prefix: tuple[str, ...] = ()) -> list[str]:
    """What bash offers after `words` (the last word completed), with lulayer's completion script."""
    script = (f'eval "$(_LULAYER_COMPLETE=bash_source {shlex.quote(str(LULAYER))})"; '
              f"COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); "
              f'[ "${{COMP_LINE: -1}}" = " " ] && COMP_CWORD=${{#COMP_WORDS[@]}}; '
              "_lulayer_completion lulayer; printf '%s\\n' \"${COMPREPLY[@]}\"")
    env = dict(os.environ, COMP_LINE=f"{words}", PATH=f"{LULAYER.parent}:/usr/bin:/bin")
    proc = subprocess.run([*prefix, "bash", "-c", script], capture_output=True, text=True, env=env, timeout=60,
                          check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


def test_subcommands_and_options_complete() -> None:
    assert complete("lulayer un") == ["uninstall"]
    assert set(complete("lulayer st")) == {"status"}
    assert {"--allow-inactive", "--allow-replacement"} <= set(complete("lulayer install --al"))
    assert {"--pending-exit-77"} <= set(complete("lulayer status --pe"))
    assert "--unchanged-exit-77" in complete("lulayer uninstall --un")


@pytest.fixture
def readable_sysroot() -> Iterator[Path]:
    """A fixture sysroot another user can read (pytest's tmp_path is root's alone)."""
    top = Path(tempfile.mkdtemp(prefix="lulayer-completion-"))
    top.chmod(0o755)
    sysroot = fixture_build.clone_sysroot(fixture_build.sysroot_template(), top / "sysroot")
    try:
        yield sysroot
    finally:
        fixture_build.remove_sysroot(sysroot)
        shutil.rmtree(top)


@pytest.mark.root
def test_uninstall_completes_layered_packages_as_another_user_while_the_lock_is_held(
        readable_sysroot: Path) -> None:
    lulayer(readable_sysroot, "install", "htop", "postscript")
    words = f"lulayer --sysroot {readable_sysroot} uninstall "
    sysroot = OSTree.Sysroot.new(Gio.File.new_for_path(str(readable_sysroot)))
    sysroot.lock()  # another operation under way: completion must not wait for it
    try:
        assert complete(words, prefix=NOBODY) == ["htop", "postscript"]
        assert complete(words + "p", prefix=NOBODY) == ["postscript"]
        assert complete(words + "htop ", prefix=NOBODY) == ["postscript"]
    finally:
        sysroot.unlock()


def test_completion_of_a_missing_sysroot_offers_nothing(tmp_path: Path) -> None:
    assert complete(f"lulayer --sysroot {tmp_path}/none uninstall ") == []
