"""The .origin key file: what lulayer reads and writes, with rpm-ostree's keys (no root, no sysroot)."""

from __future__ import annotations

import pytest

from lulayer.errors import SysrootError
from lulayer.sysroot import Origin


def text(origin: Origin) -> str:
    data, _ = origin.to_keyfile().to_data()
    return str(data)


def test_a_plain_origin_reads_its_refspec_and_no_packages() -> None:
    o = Origin.from_data("[origin]\nrefspec=fedora:fedora/41/x86_64/silverblue\n")
    assert o.refspec == "fedora:fedora/41/x86_64/silverblue"
    assert o.requested == ()


def test_a_layered_origin_reads_baserefspec_and_requested() -> None:
    o = Origin.from_data("[origin]\nbaserefspec=os:base\n\n[packages]\nrequested=htop;vim;\n")
    assert o.refspec == "os:base"
    assert o.requested == ("htop", "vim")


def test_requesting_packages_writes_baserefspec_as_rpm_ostree_does() -> None:
    o = Origin.from_data("[origin]\nrefspec=os:base\n").with_requested(["vim", "htop", "vim"])
    out = text(o)
    assert "baserefspec=os:base" in out
    assert "\nrefspec=" not in out
    assert "requested=htop;vim;" in out
    assert Origin.from_data(out).requested == ("htop", "vim")


def test_dropping_every_package_goes_back_to_refspec() -> None:
    o = Origin.from_data("[origin]\nbaserefspec=os:base\n[packages]\nrequested=htop;\n").with_requested(())
    out = text(o)
    assert "\nrefspec=os:base" in "\n" + out
    assert "baserefspec" not in out
    assert "requested" not in out


def test_keys_lulayer_does_not_own_are_kept_with_their_comments() -> None:
    src = ("# pinned by the admin\n[origin]\nrefspec=os:base\nunlocked=hotfix\n\n"
           "[rpmostree]\nregenerate-initramfs=true\n")
    out = text(Origin.from_data(src).with_requested(["htop"]))
    assert "# pinned by the admin" in out
    assert "unlocked=hotfix" in out
    assert "[rpmostree]\nregenerate-initramfs=true" in out


@pytest.mark.parametrize("data", ["[origin]\n", "[packages]\nrequested=htop;\n", ""])
def test_an_origin_without_a_refspec_is_refused(data: str) -> None:
    with pytest.raises(SysrootError, match="no \\[origin\\] refspec or baserefspec"):
        Origin.from_data(data)


def test_an_unreadable_origin_is_refused() -> None:
    with pytest.raises(SysrootError, match="cannot be read"):
        Origin.from_data("this is not a key file\x00")
