"""Bad input to the real CLI: one `error:` line, a non-zero exit, no traceback, nothing changed.

Each test runs ``python -m lulayer --sysroot SYSROOT ...`` as a subprocess on a fresh
fixture sysroot, with the bad input made for real (a broken repository, a garbled rpm,
an unsigned package under gpgcheck=1, a broken booted marker, an unprivileged user), and
checks the message a user sees and that the deployments and the OSTree repository
(``ostree/``, minus the resolver's download cache and the repository's tmp) are as before.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from fixtures import build as fixtures_build
from tests.helpers import cli_argv, one_error_line, tree_snapshot

TOP = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.root

# What may change on a failed run: the resolver's metadata/package cache, ostree's scratch.
UNTRACKED = ("deploy/fedora/var/cache", "repo/tmp")


# --------------------------------------------------------------------------- helpers


def cli(sysroot: Path, *args: str, prefix: Sequence[str] = (), debug: bool = False) -> subprocess.CompletedProcess[str]:
    argv = [*prefix, *cli_argv(sysroot, *(["--debug"] if debug else []), *args)]
    return subprocess.run(argv, capture_output=True, text=True, cwd=TOP, timeout=300,
                          env=dict(os.environ, LC_ALL="C.UTF-8"))


class State:
    """The deployment list and a snapshot of ostree/ of a sysroot, to compare before/after."""

    def __init__(self, sysroot: Path) -> None:
        self.sysroot = sysroot
        self.deployments = fixtures_build.deployments(sysroot) if (sysroot / "ostree/repo").is_dir() else []
        self.files = tree_snapshot(sysroot / "ostree", UNTRACKED)

    def assert_unchanged(self) -> None:
        after = State(self.sysroot)
        assert after.deployments == self.deployments
        added = sorted(set(after.files) - set(self.files))
        removed = sorted(set(self.files) - set(after.files))
        changed = sorted(p for p in set(self.files) & set(after.files) if self.files[p] != after.files[p])
        assert not (added or removed or changed), f"added {added[:10]}, removed {removed[:10]}, changed {changed[:10]}"


def repo_file(sysroot: Path) -> Path:
    return fixtures_build.booted_deployment(sysroot) / fixtures_build.REPO_FILE


def set_repo_options(sysroot: Path, **options: str) -> None:
    """Set KEY=VALUE lines of the booted deployment's fixture .repo file."""
    path = repo_file(sysroot)
    lines = path.read_text().splitlines()
    for key, value in options.items():
        lines = [ln for ln in lines if not ln.startswith(f"{key}=")] + [f"{key}={value}"]
    path.write_text("\n".join(lines) + "\n")


def copy_repo(fixture_repo: Path, dest: Path) -> Path:
    shutil.copytree(fixture_repo, dest)
    return dest


# --------------------------------------------------------------------------- package errors


def test_unknown_package_is_refused(sysroot: Path) -> None:
    state = State(sysroot)
    one_error_line(cli(sysroot, "install", "no-such-package"),
                   "no package matches 'no-such-package' in the enabled repositories")
    state.assert_unchanged()


def test_unsatisfiable_dependency_is_refused(sysroot: Path) -> None:
    state = State(sysroot)
    one_error_line(cli(sysroot, "install", "needs-missing"), "dependencies cannot be satisfied",
                   "nothing provides no-such-capability needed by needs-missing-1.0-1.fc41.noarch")
    state.assert_unchanged()


def test_file_conflict_with_base_is_refused(sysroot: Path) -> None:
    state = State(sysroot)
    line = one_error_line(cli(sysroot, "install", "conflicts-base"), "/usr/lib/os-release",
                        "conflicts with file from package fedora-release")
    assert "', (" not in line, f"rpm's problem tuple leaked into the message: {line}"
    state.assert_unchanged()
    assert not list((sysroot / "ostree/repo/tmp").glob("lulayer-compose-*"))


def test_already_layered_is_refused_unless_idempotent(sysroot: Path) -> None:
    assert cli(sysroot, "install", "htop").returncode == 0
    state = State(sysroot)
    one_error_line(cli(sysroot, "install", "htop"), "already requested: htop; pass --idempotent")
    state.assert_unchanged()

    proc = cli(sysroot, "install", "--idempotent", "htop")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    state.assert_unchanged()


@pytest.mark.parametrize(("name", "says"), [("postscript", "postscript is not layered"),
                                             ("busybox", "busybox is part of the base image")],
                         ids=["not-layered", "base-package"])
def test_uninstall_of_package_not_layered_is_refused(sysroot: Path, name: str, says: str) -> None:
    assert cli(sysroot, "install", "htop").returncode == 0
    state = State(sysroot)
    one_error_line(cli(sysroot, "uninstall", name), says)
    state.assert_unchanged()


def test_uninstall_with_nothing_layered_is_refused(sysroot: Path) -> None:
    state = State(sysroot)
    one_error_line(cli(sysroot, "uninstall", "--all"), "no package is layered; nothing to uninstall")
    state.assert_unchanged()


# --------------------------------------------------------------------------- repository errors


def test_unreachable_repository_is_refused(sysroot: Path) -> None:
    set_repo_options(sysroot, baseurl="file:///nonexistent")
    state = State(sysroot)
    one_error_line(cli(sysroot, "install", "htop"),
                   f"cannot load repository metadata: Failed to download metadata for repo '{fixtures_build.REPO_ID}'",
                   "Cannot download repomd.xml", "check the baseurl in /etc/yum.repos.d")
    state.assert_unchanged()


def test_no_enabled_repository_is_refused(sysroot: Path) -> None:
    set_repo_options(sysroot, enabled="0")
    state = State(sysroot)
    reposdir = repo_file(sysroot).parent
    one_error_line(cli(sysroot, "install", "htop"), f"no enabled repository in {reposdir}")
    state.assert_unchanged()


@pytest.mark.parametrize("text", ["[broken\nbaseurl=file:///x\n", "[s]\nname=s\nbaseurl=file:///x\nenabled=maybe\n"],
                         ids=["syntax", "invalid-value"])
def test_broken_repo_file_is_refused(sysroot: Path, text: str) -> None:
    (repo_file(sysroot).parent / "broken.repo").write_text(text)
    state = State(sysroot)
    one_error_line(cli(sysroot, "install", "htop"), "invalid repository configuration", "broken.repo")
    state.assert_unchanged()


@pytest.mark.parametrize(("damage", "says"), [
    ("garbled-repomd", "repomd.xml parser error"),
    # librepo checks each metadata file against repomd.xml's checksum: the truncated one fails.
    ("truncated-primary", "primary.xml.gz - Cannot download"),
], ids=["garbled-repomd", "truncated-primary"])
def test_corrupt_repository_metadata_is_refused(sysroot: Path, fixture_repo: Path, tmp_path: Path,
                                                damage: str, says: str) -> None:
    repo = copy_repo(fixture_repo, tmp_path / "repo")
    if damage == "garbled-repomd":
        (repo / "repodata/repomd.xml").write_text("<repomd this is not xml\n")
    else:
        primary = next((repo / "repodata").glob("*primary.xml*"))
        data = primary.read_bytes()
        primary.write_bytes(data[: len(data) // 2])
    set_repo_options(sysroot, baseurl=f"file://{repo}")
    state = State(sysroot)
    one_error_line(cli(sysroot, "install", "htop"),
                   f"cannot load repository metadata: Failed to download metadata for repo '{fixtures_build.REPO_ID}'",
                   says)
    state.assert_unchanged()


def test_rpm_whose_digest_does_not_match_metadata_is_refused(sysroot: Path, fixture_repo: Path,
                                                              tmp_path: Path) -> None:
    repo = copy_repo(fixture_repo, tmp_path / "repo")
    htop = next(repo.glob("htop-*.rpm"))
    # Another real package's bytes under htop's name: a valid rpm, the wrong digest.
    shutil.copyfile(fixtures_build.rpm_path("postscript"), htop)
    set_repo_options(sysroot, baseurl=f"file://{repo}")
    state = State(sysroot)
    one_error_line(cli(sysroot, "install", "htop"), f"{htop.name} does not match the repository metadata")
    state.assert_unchanged()


def test_rpm_missing_from_repository_is_refused(sysroot: Path, fixture_repo: Path, tmp_path: Path) -> None:
    repo = copy_repo(fixture_repo, tmp_path / "repo")
    htop = next(repo.glob("htop-*.rpm"))
    htop.unlink()
    set_repo_options(sysroot, baseurl=f"file://{repo}")
    state = State(sysroot)
    one_error_line(cli(sysroot, "install", "htop"), f"{htop} is missing from its repository")
    state.assert_unchanged()


def test_unsigned_package_under_gpgcheck_is_refused(sysroot: Path, tmp_path: Path) -> None:
    gnupg = tmp_path / "gnupg"
    gnupg.mkdir(mode=0o700)
    env = dict(os.environ, GNUPGHOME=str(gnupg))
    try:
        subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "lulayer test <test@lulayer.invalid>",
                        "default", "default", "never"], env=env, check=True, capture_output=True)
        key = subprocess.run(["gpg", "--batch", "--armor", "--export", "test@lulayer.invalid"],
                             env=env, check=True, capture_output=True).stdout
    finally:  # the agent gpg started for this home would outlive the test
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, capture_output=True)
    assert b"BEGIN PGP PUBLIC KEY BLOCK" in key
    key_dir = fixtures_build.booted_deployment(sysroot) / "etc/pki/rpm-gpg"
    key_dir.mkdir(parents=True, exist_ok=True)
    (key_dir / "RPM-GPG-KEY-lulayer-test").write_bytes(key)
    set_repo_options(sysroot, gpgcheck="1", gpgkey="file:///etc/pki/rpm-gpg/RPM-GPG-KEY-lulayer-test")
    state = State(sysroot)
    one_error_line(cli(sysroot, "install", "htop"),
                   f"htop-3.3.0-1.fc41.x86_64.rpm is not signed (repository '{fixtures_build.REPO_ID}' has gpgcheck=1)")
    state.assert_unchanged()


# --------------------------------------------------------------------------- sysroot errors


def test_folder_that_is_not_a_sysroot_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "not-a-sysroot"
    folder.mkdir()
    one_error_line(cli(folder, "install", "htop"), f"{folder} is not an OSTree sysroot: it has no ostree/repo")
    assert list(folder.iterdir()) == []


def test_missing_booted_marker_is_refused(sysroot: Path) -> None:
    (sysroot / fixtures_build.BOOTED_MARKER).unlink()
    state = State(sysroot)
    missing = f"{sysroot / fixtures_build.BOOTED_MARKER} is missing: no deployment is marked booted"
    one_error_line(cli(sysroot, "install", "htop"), missing)
    one_error_line(cli(sysroot, "status"), missing)
    state.assert_unchanged()


def test_stale_booted_marker_is_refused(sysroot: Path) -> None:
    (sysroot / fixtures_build.BOOTED_MARKER).write_text(f"ostree/deploy/fedora/deploy/{'0' * 64}.0\n")
    state = State(sysroot)
    one_error_line(cli(sysroot, "install", "htop"), f"{sysroot / fixtures_build.BOOTED_MARKER} names",
                   "which is not a deployment of this sysroot")
    state.assert_unchanged()


def _importable_by_anyone(dest: Path) -> Path:
    """lulayer (laid out as it installs) and click, copied where any user can import them:
    the checkout and its venv may sit under /root, which only root can read."""
    import click

    dest.mkdir(mode=0o755)
    shutil.copytree(TOP / "lulayer", dest / "lulayer", ignore=shutil.ignore_patterns("__pycache__"))
    for sub in ("layering", "rpmdb", "apply"):
        shutil.copytree(TOP / sub, dest / "lulayer" / sub, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(Path(click.__file__).parent, dest / "click", ignore=shutil.ignore_patterns("__pycache__"))
    for dirpath, _, filenames in os.walk(dest):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    return dest


def test_mutating_command_as_non_root_is_refused(sysroot: Path) -> None:
    state = State(sysroot)
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)
        site = _importable_by_anyone(Path(tmp) / "site")
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-m", "lulayer",
             "--sysroot", str(sysroot), "install", "htop"],
            capture_output=True, text=True, cwd="/", timeout=300,
            env=dict(os.environ, LC_ALL="C.UTF-8", PYTHONPATH=str(site)),
        )
    one_error_line(proc, "lulayer must run as root to change deployments")
    state.assert_unchanged()


def test_debug_shows_traceback(sysroot: Path) -> None:
    state = State(sysroot)
    proc = cli(sysroot, "install", "no-such-package", debug=True)
    assert proc.returncode > 0
    assert "Traceback" in proc.stderr
    assert "ResolveError" in proc.stderr and "no-such-package" in proc.stderr
    state.assert_unchanged()
