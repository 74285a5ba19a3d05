"""The booted tree's repository configuration, read by each backend's library as dnf reads it.

Each test writes a tree's /etc/yum.repos.d (and /etc/dnf/vars) by hand, points it at
real rpm-md repositories (the cached fixture repository, or small ones made with
createrepo_c), and resolves through the real backend onto an empty installed root:
no root needed, no sysroot, nothing mocked. A backend that does not import is skipped
with the reason (Debian packages no libdnf5).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest

from fixtures import build as fixtures_build
from lulayer.errors import ResolveError
from lulayer.layering.resolver import (
    Backend,
    RepoConfigTree,
    Resolution,
    Resolver,
    ResolveRequest,
    available_backends,
    make_resolver,
)

Resolve = Callable[..., Resolution]


@pytest.fixture(params=list(Backend), ids=[b.value for b in Backend])
def resolver(request: pytest.FixtureRequest) -> Resolver:
    backend: Backend = request.param
    reason = available_backends()[backend]
    if reason is not None:
        pytest.skip(reason)
    return make_resolver(backend)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The tree whose /etc configures the resolver (the booted deployment's, in lulayer)."""
    root = tmp_path / "tree"
    (root / "etc/yum.repos.d").mkdir(parents=True)
    return root


@pytest.fixture
def resolve(resolver: Resolver, tree: Path, tmp_path: Path) -> Resolve:
    """resolve(*specs): resolve onto an empty installed root with tree's repository configuration."""
    installed_root = tmp_path / "installed"
    installed_root.mkdir()

    def run(*specs: str) -> Resolution:
        return resolver.resolve(ResolveRequest(
            installed_root=installed_root, dbpath=PurePosixPath("/usr/lib/sysimage/rpm"),
            repos=RepoConfigTree(tree), cache_dir=tmp_path / "cache", releasever="41", install=specs,
        ))

    return run


def write_repo_file(tree: Path, name: str, text: str) -> Path:
    path = tree / "etc/yum.repos.d" / name
    path.write_text(text)
    return path


def names(resolution: Resolution) -> dict[str, str]:
    return {r.package.name: r.package.version for r in resolution.install}


@pytest.fixture(scope="module")
def upgrademe_repos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two repositories: upgrademe 1.0 in the first, with the base image's packages (the installed root
    is empty, and its scriptlet needs /bin/sh), upgrademe 2.0 in the second."""
    top = tmp_path_factory.mktemp("upgrademe")
    old = [fixtures_build.rpm_path("upgrademe", "1.0"), *map(fixtures_build.rpm_path, fixtures_build.BASE_PACKAGES)]
    return (fixtures_build.make_repo(top / "old", old),
            fixtures_build.make_repo(top / "new", [fixtures_build.rpm_path("upgrademe", "2.0")]))


# --------------------------------------------------------------------------- what dnf substitutes and honours


def test_releasever_basearch_and_the_trees_vars_are_substituted(resolve: Resolve, tree: Path, tmp_path: Path,
                                                                 fixture_repo: Path) -> None:
    basearch = os.uname().machine
    mirror = tmp_path / "mirror-from-vars" / "41" / basearch
    mirror.parent.mkdir(parents=True)
    mirror.symlink_to(fixture_repo)
    (tree / "etc/dnf/vars").mkdir(parents=True)
    (tree / "etc/dnf/vars/mirror").write_text("mirror-from-vars\n")
    write_repo_file(tree, "subst.repo", f"[fixtures-$releasever]\nname=fixtures\n"
                                        f"baseurl=file://{tmp_path}/$mirror/$releasever/$basearch\n")

    resolution = resolve("htop")

    assert names(resolution) == {"htop": "3.3.0", "ncurses-libs": "6.4"}
    assert [r.id for r in resolution.repos] == ["fixtures-41"]
    assert resolution.repos[0].baseurls == (f"file://{mirror}",)
    assert {r.repo_id for r in resolution.install} == {"fixtures-41"}


def test_a_disabled_repository_is_skipped(resolve: Resolve, tree: Path, fixture_repo: Path) -> None:
    # Were it read, its missing metadata would fail the load.
    write_repo_file(tree, "a.repo", f"[on]\nname=on\nbaseurl=file://{fixture_repo}\n\n"
                                    "[off]\nname=off\nbaseurl=file:///nonexistent\nenabled=0\n")

    resolution = resolve("htop")

    assert [r.id for r in resolution.repos] == ["on"]
    assert names(resolution) == {"htop": "3.3.0", "ncurses-libs": "6.4"}


@pytest.mark.parametrize("option", ["excludepkgs=htop", "exclude=htop", "includepkgs=ncurses-libs"])
def test_excluded_packages_are_not_found(resolve: Resolve, tree: Path, fixture_repo: Path, option: str) -> None:
    write_repo_file(tree, "f.repo", f"[f]\nname=f\nbaseurl=file://{fixture_repo}\n{option}\n")

    with pytest.raises(ResolveError, match="no package matches 'htop'"):
        resolve("htop")
    assert names(resolve("ncurses-libs")) == {"ncurses-libs": "6.4"}


@pytest.mark.parametrize(("priority", "expected"), [(None, "2.0"), (10, "1.0")], ids=["no-priority", "priority"])
def test_priority_picks_the_repository_before_the_version(resolve: Resolve, tree: Path,
                                                          upgrademe_repos: tuple[Path, Path],
                                                          priority: int | None, expected: str) -> None:
    old, new = upgrademe_repos
    write_repo_file(tree, "old.repo", f"[old]\nname=old\nbaseurl=file://{old}\n"
                                      + (f"priority={priority}\n" if priority is not None else ""))
    write_repo_file(tree, "new.repo", f"[new]\nname=new\nbaseurl=file://{new}\n")

    assert names(resolve("upgrademe"))["upgrademe"] == expected


def test_skip_if_unavailable_is_honoured(resolve: Resolve, tree: Path, fixture_repo: Path) -> None:
    write_repo_file(tree, "a.repo", f"[good]\nname=good\nbaseurl=file://{fixture_repo}\n")
    gone = write_repo_file(tree, "gone.repo", "[gone]\nname=gone\nbaseurl=file:///nonexistent\n")

    with pytest.raises(ResolveError, match="cannot load repository metadata"):
        resolve("htop")

    gone.write_text(gone.read_text() + "skip_if_unavailable=1\n")
    assert names(resolve("htop")) == {"htop": "3.3.0", "ncurses-libs": "6.4"}


def test_gpgkey_file_urls_point_into_the_tree(resolve: Resolve, tree: Path, fixture_repo: Path) -> None:
    write_repo_file(tree, "k.repo", f"[k]\nname=k\nbaseurl=file://{fixture_repo}\ngpgcheck=1\n"
                                    "gpgkey=file:///etc/pki/rpm-gpg/KEY-$releasever\n"
                                    "  https://keys.example.invalid/KEY\n\n"
                                    f"[plain]\nname=plain\nbaseurl=file://{fixture_repo}\n")

    repos = {r.id: r for r in resolve("htop").repos}

    assert repos["k"].gpgcheck is True
    assert repos["k"].gpgkeys == (f"file://{tree}/etc/pki/rpm-gpg/KEY-41", "https://keys.example.invalid/KEY")
    assert repos["k"].repofile == str(tree / "etc/yum.repos.d/k.repo")
    assert repos["plain"].gpgcheck is False
    assert repos["plain"].gpgkeys == ()


# --------------------------------------------------------------------------- what is refused


def test_a_repository_without_baseurl_metalink_or_mirrorlist_is_refused(resolve: Resolve, tree: Path) -> None:
    path = write_repo_file(tree, "n.repo", "[nowhere]\nname=nowhere\n")

    with pytest.raises(ResolveError, match="has no baseurl, metalink or mirrorlist") as e:
        resolve("htop")
    assert "'nowhere'" in e.value.message and str(path) in e.value.message


@pytest.mark.parametrize(("text", "needle"), [
    ("[broken\nbaseurl=file:///x\n", "b.repo"),
    ("baseurl=file:///x\n[s]\nname=s\n", "b.repo"),
    ("[s]\nname=s\nbaseurl=file:///x\nenabled=maybe\n", "maybe"),
    ("[bad id!]\nname=s\nbaseurl=file:///x\n", "bad id!"),
], ids=["unclosed-section", "option-before-section", "invalid-boolean", "invalid-id"])
def test_a_malformed_repo_file_is_refused(resolve: Resolve, tree: Path, fixture_repo: Path, text: str,
                                          needle: str) -> None:
    write_repo_file(tree, "a.repo", f"[good]\nname=good\nbaseurl=file://{fixture_repo}\n")
    write_repo_file(tree, "b.repo", text)

    with pytest.raises(ResolveError, match="invalid repository configuration") as e:
        resolve("htop")
    assert needle in e.value.message
    assert "\n" not in e.value.message


@pytest.mark.parametrize("case", ["only-disabled", "empty-reposdir", "no-reposdir"])
def test_no_enabled_repository_is_refused(resolve: Resolve, tree: Path, case: str) -> None:
    if case == "only-disabled":
        write_repo_file(tree, "off.repo", "[off]\nname=off\nbaseurl=file:///nonexistent\nenabled=0\n")
    elif case == "no-reposdir":
        (tree / "etc/yum.repos.d").rmdir()

    with pytest.raises(ResolveError, match=f"no enabled repository in {tree}/etc/yum.repos.d"):
        resolve("htop")
