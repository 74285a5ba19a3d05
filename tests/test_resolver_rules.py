"""The resolver's rules, written once in lulayer.layering.resolver, on the plain data both backends give them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lulayer.errors import ResolveError
from lulayer.layering.resolver import (
    RepoConfig,
    RepoConfigTree,
    check_repo_files,
    check_repos,
    check_spec,
    check_transaction,
)
from lulayer.rpmdb.model import Package

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


def repo(repo_id: str, **kwargs: Any) -> RepoConfig:
    return RepoConfig(id=repo_id, repofile=f"/tree/etc/yum.repos.d/{repo_id}.repo", **kwargs)


def test_repositories_with_a_source_pass() -> None:
    tree = RepoConfigTree(Path("/tree"))
    check_repos(tree, [repo("a", baseurls=("https://a",)), repo("b", metalink="https://b"),
                       repo("c", mirrorlist="https://c")])


def test_no_enabled_repository_is_refused() -> None:
    with pytest.raises(ResolveError) as e:
        check_repos(RepoConfigTree(Path("/tree")), [])
    assert e.value.message == "no enabled repository in /tree/etc/yum.repos.d"


def test_a_repository_with_no_source_is_refused() -> None:
    with pytest.raises(ResolveError) as e:
        check_repos(RepoConfigTree(Path("/tree")), [repo("a", baseurls=("https://a",)), repo("b")])
    assert e.value.message == "repository 'b' in /tree/etc/yum.repos.d/b.repo has no baseurl, metalink or mirrorlist"


def test_repo_files_read_whole_pass() -> None:
    check_repo_files({"/r/a.repo": ["a", "b"], "/r/empty.repo": []}, {"a", "b", "c"}, errors=[],
                     warnings=["Repository 'b' is missing name in configuration, using id."])


def test_a_section_the_library_skipped_is_refused_with_what_it_said() -> None:
    with pytest.raises(ResolveError) as e:
        check_repo_files({"/r/a.repo": ["a", "bad id!"]}, {"a"}, errors=[],
                         warnings=["Bad id for repo: bad id!, byte =   3"])
    assert e.value.message == ("invalid repository configuration: repository 'bad id!' in /r/a.repo: "
                               "Bad id for repo: bad id!, byte = 3")


def test_an_error_the_library_logged_is_refused() -> None:
    with pytest.raises(ResolveError, match="invalid repository configuration: Invalid configuration value"):
        check_repo_files({"/r/a.repo": ["a"]}, {"a"}, errors=["Invalid configuration value: enabled=maybe"])


def test_gpgkey_file_urls_are_taken_inside_the_tree() -> None:
    tree = RepoConfigTree(Path("/sysroot/deploy/x.0"))
    assert tree.key_url("file:///etc/pki/rpm-gpg/K") == "file:///sysroot/deploy/x.0/etc/pki/rpm-gpg/K"
    assert tree.key_url("/etc/pki/rpm-gpg/K") == "file:///sysroot/deploy/x.0/etc/pki/rpm-gpg/K"
    assert tree.key_url("https://example.invalid/K") == "https://example.invalid/K"
    assert tree.path("/etc/dnf/vars") == Path("/sysroot/deploy/x.0/etc/dnf/vars")
