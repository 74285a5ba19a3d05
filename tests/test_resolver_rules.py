"""The resolver's rules, written once in lulayer.layering.resolver, on the plain data both backends give them."""

from __future__ import annotations

import pytest

from lulayer.errors import ResolveError
from lulayer.layering.resolver import check_spec, check_transaction
from lulayer.rpmdb.db import Package

BASE = {"setup", "filesystem", "busybox"}
HTOP = Package("htop", 0, "3.3.0", "1.fc41", "x86_64")
BUSYBOX_2 = Package("busybox", 0, "2.0", "1.fc41", "x86_64")
BUSYBOX_1 = Package("busybox", 0, "1.35.0", "1.fc41", "x86_64")


def test_a_spec_that_matches_something_new_passes() -> None:
    check_spec("htop", {"htop"}, BASE)
    check_spec("/bin/sh", {"busybox", "bash"}, BASE)  # one of its providers is not in the base


def test_a_spec_that_matches_nothing_is_refused() -> None:
    with pytest.raises(ResolveError) as e:
        check_spec("no-such-package", set(), BASE)
    assert e.value.message == "no package matches 'no-such-package' in the enabled repositories"
    assert e.value.hint == "check the name with `dnf --installroot=... list` or the repository"


def test_a_spec_that_matches_only_base_packages_is_refused() -> None:
    with pytest.raises(ResolveError) as e:
        check_spec("/bin/sh", {"busybox"}, BASE)
    assert e.value.message == "'/bin/sh' is already in the base image"
    assert e.value.hint == "only packages the base lacks can be layered"


def test_a_transaction_that_only_adds_passes() -> None:
    check_transaction(BASE, [], [HTOP])


@pytest.mark.parametrize(("removes", "installs", "named"), [
    ([BUSYBOX_1], [], "busybox-1.35.0-1.fc41.x86_64"),
    ([], [HTOP, BUSYBOX_2], "busybox-2.0-1.fc41.x86_64"),
    ([BUSYBOX_1], [BUSYBOX_2], "busybox-1.35.0-1.fc41.x86_64, busybox-2.0-1.fc41.x86_64"),
], ids=["removal", "replacement", "both"])
def test_a_transaction_that_touches_the_base_is_refused(removes: list[Package], installs: list[Package],
                                                        named: str) -> None:
    with pytest.raises(ResolveError) as e:
        check_transaction(BASE, removes, installs)
    assert e.value.message == f"layering would replace base packages: {named}"
    assert e.value.hint == "replacing base packages is not supported"
