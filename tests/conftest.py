"""Test harness: a private mount namespace for the whole run, and the root marker.

Every mount a test makes (live overlays, loop devices) is made in a mount
namespace private to this pytest process, so none outlives the run or reaches
the host, whichever way pytest was started.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

TOP = Path(__file__).resolve().parent.parent
if str(TOP) not in sys.path:
    sys.path.insert(0, str(TOP))

from lulayer.mounts import unshare_mount_namespace  # noqa: E402  (needs TOP on sys.path)

IS_ROOT = os.geteuid() == 0


def pytest_configure(config: pytest.Config) -> None:
    if IS_ROOT and not os.environ.get("LULAYER_TEST_NAMESPACE"):
        unshare_mount_namespace()
        # Children (lulayer subprocesses) inherit it; mark it so nobody unshares twice.
        os.environ["LULAYER_TEST_NAMESPACE"] = str(os.getpid())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root: mounts, chroot and file ownership")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


# --------------------------------------------------------------------------- fixtures
# Real RPMs, repository and OSTree sysroots from fixtures/build.py (cached in
# .cache/fixtures; the first run builds them, later runs reuse them).

from fixtures import build as fixture_build  # noqa: E402  (needs TOP on sys.path)


@pytest.fixture(scope="session")
def fixture_rpms() -> Path:
    """The folder of every built fixture RPM (fixtures/specs/*.spec)."""
    return fixture_build.build_rpms()


@pytest.fixture(scope="session")
def fixture_repo() -> Path:
    """The default rpm-md repository (shared and cached: never change it; make your own
    with fixture_build.make_repo(tmp_path / "repo", ...) to add upgrademe-2.0)."""
    return fixture_build.fixture_repo()


@pytest.fixture
def make_sysroot(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Factory: make_sysroot(extra_files=0, rpmdb=..., origin=...) returns a fresh OSTree folder
    sysroot, a clone of the cached template (fixture_build.sysroot_template: the rpmdb layout and
    the origin's form are its choices), removed (unmounted, chattr -i) after the test."""
    made: list[Path] = []

    def make(extra_files: int = 0, **choices: Any) -> Path:
        dest = tmp_path / f"sysroot{len(made) or ''}"
        made.append(dest)
        return fixture_build.clone_sysroot(fixture_build.sysroot_template(extra_files, **choices), dest)

    yield make
    for path in reversed(made):
        fixture_build.remove_sysroot(path)


@pytest.fixture
def sysroot(make_sysroot: Callable[..., Path]) -> Path:
    """A fresh base OSTree folder sysroot at tmp_path/sysroot, booted into its only
    deployment (see fixture_build.booted_deployment)."""
    return make_sysroot()
