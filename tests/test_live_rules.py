"""The rules that refuse a live change, on TreeDiff and PackageChanges values (no root, no tree)."""

from __future__ import annotations

import pytest

from lulayer.apply.diff import DirEntry, FileEntry, Kind, TreeDiff
from lulayer.apply.live import check_live_change
from lulayer.errors import LiveApplyError
from lulayer.rpmdb.model import Package, PackageChanges

KVER = "6.11.0-1.fc41.x86_64"
OLD = Package("upgrademe", 0, "1.0", "1", "noarch")
NEW = Package("upgrademe", 0, "2.0", "1", "noarch")
HTOP = Package("htop", 0, "3.3.0", "1", "x86_64")
ADDS = TreeDiff(added_dirs=(DirEntry("/usr/share/htop", "d" * 64),),
                added_files=(FileEntry("/usr/bin/htop", "a" * 64),))
CHANGES = TreeDiff(changed_files=(FileEntry("/usr/share/upgrademe/VERSION", "b" * 64),))
NO_PACKAGES = PackageChanges()
REMOVALS = TreeDiff(removed_files=("/usr/bin/htop",), removed_dirs=("/usr/share/htop",))


def check(diff: TreeDiff, changes: PackageChanges = NO_PACKAGES, *, kernels: frozenset[str] = frozenset(),
          type_changes: tuple[tuple[str, Kind, Kind], ...] = (), allow_replacement: bool = False,
          allow_removal: bool = False) -> None:
    check_live_change(diff, changes, set(kernels), list(type_changes), allow_replacement=allow_replacement,
                      allow_removal=allow_removal)


def refusal(diff: TreeDiff, changes: PackageChanges = NO_PACKAGES, **kwargs: object) -> LiveApplyError:
    with pytest.raises(LiveApplyError) as e:
        check(diff, changes, **kwargs)  # type: ignore[arg-type]
    return e.value


def test_adding_files_and_packages_goes_live_without_any_flag() -> None:
    check(ADDS, PackageChanges(added=(HTOP,)))


def test_replacing_a_package_is_refused_naming_it() -> None:
    e = refusal(CHANGES, PackageChanges(upgraded=((OLD, NEW),)))
    assert e.message == "packages would be replaced: upgrademe-1.0-1.noarch -> upgrademe-2.0-1.noarch"
    assert e.hint == "pass --allow-replacement to apply it live, or reboot into it"
    check(CHANGES, PackageChanges(upgraded=((OLD, NEW),)), allow_replacement=True)


def test_removing_a_package_is_refused_unless_removal_is_what_was_asked() -> None:
    e = refusal(REMOVALS, PackageChanges(removed=(HTOP,)))
    assert e.message == "packages would be removed: htop-3.3.0-1.x86_64"
    check(REMOVALS, PackageChanges(removed=(HTOP,)), allow_removal=True)  # uninstall --live


def test_files_changed_under_an_unchanged_package_set_are_refused_by_count() -> None:
    e = refusal(TreeDiff(changed_files=CHANGES.changed_files, removed_files=REMOVALS.removed_files,
                         removed_dirs=REMOVALS.removed_dirs))
    assert e.message == "the update would change 1 and remove 2 existing files"


def test_a_type_change_is_refused_naming_the_path_and_both_kinds() -> None:
    retyped = (("/usr/share/tc/olddir", Kind.DIRECTORY, Kind.SYMLINK),)
    e = refusal(CHANGES, type_changes=retyped)
    assert e.message == "the update would turn /usr/share/tc/olddir from a directory into a symlink"
    check(CHANGES, type_changes=retyped, allow_replacement=True)


def test_a_change_to_the_running_kernels_modules_is_refused_even_with_allow_replacement() -> None:
    modules = TreeDiff(added_files=(FileEntry(f"/usr/lib/modules/{KVER}/extra/x.ko", "c" * 64),))
    for allow in (False, True):
        e = refusal(modules, kernels=frozenset({KVER}), allow_replacement=allow)
        assert e.message == f"the update changes the running kernel's /usr/lib/modules/{KVER}"
    check(modules, kernels=frozenset({"6.12.0-1.fc41.x86_64"}))  # another kernel's modules are only files
