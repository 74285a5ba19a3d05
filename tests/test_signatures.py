"""Signatures under gpgcheck=1, the key in the booted deployment's /etc/pki/rpm-gpg: a package
signed with it installs; unsigned, another key's, altered after signing, or an unsigned
dependency is refused in one line before anything is written.

The keys are made with gpg for the module, the packages signed with rpmsign.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fixtures import build as fixture_build
from fixtures import rpmpatch
from fixtures.keys import Key, signed_copy, two_keys
from tests.helpers import (
    WITH_HTOP,
    booted,
    commit_of,
    fstype_at,
    lulayer,
    one_error_line,
    pending,
    point_repo_file,
    repo_of,
    rpm_names,
    run,
)
from tests.invariants import Untouched, assert_live_is, usr_entries

pytestmark = pytest.mark.root

HTOP_RPM = "htop-3.3.0-1.fc41.x86_64.rpm"
NCURSES_RPM = "ncurses-libs-6.4-1.fc41.x86_64.rpm"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Key, Key]]:
    """The tree's key and another one."""
    with two_keys(tmp_path_factory.mktemp("gpg")) as made:
        yield made


def signed_into(rpm_file: Path, dest_dir: Path, key: Key) -> Path:
    return signed_copy(rpm_file, dest_dir / rpm_file.name, key)


def gpgcheck_with(sysroot: Path, key: Key) -> None:
    """gpgcheck=1 with KEY in the booted deployment's /etc/pki/rpm-gpg."""
    live = booted(sysroot)
    keyfile = live / "etc/pki/rpm-gpg/RPM-GPG-KEY-lulayer-tree"
    keyfile.parent.mkdir(parents=True, exist_ok=True)
    keyfile.write_bytes(key.armored)
    f = live / fixture_build.REPO_FILE
    lines = [ln for ln in f.read_text().splitlines() if not ln.startswith(("gpgcheck=", "gpgkey="))]
    f.write_text("\n".join([*lines, "gpgcheck=1", "gpgkey=file:///etc/pki/rpm-gpg/RPM-GPG-KEY-lulayer-tree"]) + "\n")


def htop_pair(tmp_path: Path, sign: Callable[[Path, Path], Path]) -> list[Path]:
    return [sign(fixture_build.rpm_path(n), tmp_path / "signed") for n in ("htop", "ncurses-libs")]


def flip_byte(rpm_file: Path, *, in_payload: bool) -> None:
    """Alter one byte of RPM_FILE after it was signed: in its main header (which the signature
    covers) or in its compressed payload (which the header's payload digest covers)."""
    data = bytearray(rpm_file.read_bytes())
    main_off, main_end = rpmpatch.main_header_span(data)
    if in_payload:
        at = len(data) - 40
    else:
        at = data.find(b"htop 3.3.0", main_off, main_end)  # text in one of its tags
        assert at > 0
    assert (main_end <= at) == in_payload
    data[at] ^= 0x01
    rpm_file.write_bytes(bytes(data))


def test_package_signed_with_the_trees_key_installs(sysroot: Path, tmp_path: Path, keys: tuple[Key, Key]) -> None:
    tree_key, _other = keys
    live = booted(sysroot)
    signed = htop_pair(tmp_path, lambda p, d: signed_into(p, d, tree_key))
    assert tree_key.keyid[-8:].lower() in run(["rpm", "-qpi", "--nosignature", str(signed[0])]).stdout.lower()
    repo = fixture_build.make_repo(tmp_path / "repo", signed)
    point_repo_file(live, repo)
    gpgcheck_with(sysroot, tree_key)

    lulayer(sysroot, "install", "htop", "--live")

    assert rpm_names(live) == WITH_HTOP
    assert_live_is(sysroot, commit_of(pending(sysroot)), tmp_path / "target", set(WITH_HTOP))


@pytest.mark.parametrize(("case", "says"), [
    ("other-key", f"{HTOP_RPM} has a bad or unknown signature"),
    ("header-altered-after-signing", f"{HTOP_RPM} has a bad or unknown signature"),
    ("payload-altered-after-signing", f"{HTOP_RPM} has a bad or unknown signature"),
    ("dependency-unsigned", f"{NCURSES_RPM} is not signed"),
])
def test_bad_signatures_are_refused_before_anything_is_written(sysroot: Path, tmp_path: Path,
                                                              keys: tuple[Key, Key], case: str, says: str) -> None:
    tree_key, other_key = keys
    live = booted(sysroot)
    if case == "other-key":
        rpms = htop_pair(tmp_path, lambda p, d: signed_into(p, d, other_key))
    elif case.endswith("altered-after-signing"):
        rpms = htop_pair(tmp_path, lambda p, d: signed_into(p, d, tree_key))
        flip_byte(rpms[0], in_payload=case.startswith("payload"))
    else:
        rpms = [signed_into(fixture_build.rpm_path("htop"), tmp_path / "signed", tree_key),
                fixture_build.rpm_path("ncurses-libs")]
    repo = fixture_build.make_repo(tmp_path / "repo", rpms)  # metadata digests match the files as they are
    point_repo_file(live, repo)
    gpgcheck_with(sysroot, tree_key)
    before = Untouched.of(sysroot)
    usr_before = usr_entries(live / "usr")

    refused = lulayer(sysroot, "install", "htop", "--live", check=False)

    one_error_line(refused, f"{says} (repository '{fixture_build.REPO_ID}' has gpgcheck=1)")
    assert Untouched.of(sysroot) == before
    assert usr_entries(live / "usr") == usr_before
    assert fstype_at(live / "usr") is None
    assert list((repo_of(sysroot) / "tmp").glob("lulayer-*")) == []
