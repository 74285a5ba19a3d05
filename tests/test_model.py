"""The package-level model: PackageChanges.between, without root or any tree."""

from __future__ import annotations

from lulayer.rpmdb.model import Package, PackageChanges


def pkg(name: str, version: str = "1.0", release: str = "1", epoch: int = 0, arch: str = "x86_64") -> Package:
    return Package(name, epoch, version, release, arch)


def test_nevra_shows_the_epoch_only_when_set() -> None:
    assert pkg("htop", "3.3").nevra == "htop-3.3-1.x86_64"
    assert pkg("htop", "3.3", epoch=2).nevra == "htop-2:3.3-1.x86_64"


def test_between_sorts_added_removed_and_upgraded_by_name() -> None:
    old = [pkg("base"), pkg("gone"), pkg("moved", "1.0"), pkg("also-gone")]
    new = [pkg("base"), pkg("moved", "2.0"), pkg("zzz-new"), pkg("aaa-new")]
    ch = PackageChanges.between(old, new)
    assert ch.added == (pkg("aaa-new"), pkg("zzz-new"))
    assert ch.removed == (pkg("also-gone"), pkg("gone"))
    assert ch.upgraded == ((pkg("moved", "1.0"), pkg("moved", "2.0")),)
    assert not ch.empty


def test_between_counts_a_downgrade_and_an_arch_or_epoch_change_as_upgraded() -> None:
    # "upgraded" is any change of build under the same name: what replacing it live means.
    ch = PackageChanges.between([pkg("a", "2.0"), pkg("b"), pkg("c")],
                                [pkg("a", "1.0"), pkg("b", arch="noarch"), pkg("c", epoch=1)])
    assert [old.name for old, _ in ch.upgraded] == ["a", "b", "c"]
    assert not ch.added and not ch.removed


def test_between_identical_sets_is_empty() -> None:
    same = [pkg("a"), pkg("b", "2")]
    ch = PackageChanges.between(same, list(reversed(same)))
    assert ch.empty
    assert ch == PackageChanges()
