"""Signature checks of verify.check_signature, with real keys (gpg) and real signed RPMs (rpmsign).

No root needed: the packages are fixture RPMs signed here, the keys are files in a
folder, and the check reads them through rpm's keyring API.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import rpm

from fixtures import build as fixtures_build
from fixtures.keys import Key, forget, make_key, signed_copy, two_keys
from lulayer.errors import ResolveError
from lulayer.layering.resolver import RepoConfig
from lulayer.layering.verify import check_signature


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Key, Key]]:
    """The repository's key and another one."""
    with two_keys(tmp_path_factory.mktemp("gpg")) as made:
        yield made


def signed(dest: Path, key: Key | None) -> Path:
    """A copy of the fixture htop RPM at dest, signed with key (None: left unsigned)."""
    return signed_copy(fixtures_build.rpm_path("htop"), dest, key)


def header_end(path: Path) -> int:
    """Where path's payload starts."""
    ts = rpm.TransactionSet()
    ts.setVSFlags(rpm._RPMVSF_NOSIGNATURES | rpm._RPMVSF_NODIGESTS)
    with open(path, "rb") as f:
        ts.hdrFromFdno(f.fileno())
        return os.lseek(f.fileno(), 0, os.SEEK_CUR)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def repo_with_keys(tmp_path: Path, *key_files: bytes) -> RepoConfig:
    urls = []
    for i, data in enumerate(key_files):
        path = tmp_path / "keys" / f"RPM-GPG-KEY-{i}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        urls.append(f"file://{path}")
    return RepoConfig(id="signed", repofile="/etc/yum.repos.d/signed.repo", gpgcheck=True, gpgkeys=tuple(urls))


# --------------------------------------------------------------------------- accepted


def test_a_package_signed_with_the_repositorys_key_passes(tmp_path: Path, keys: tuple[Key, Key],
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    repo_key, _ = keys
    check_signature(signed(tmp_path / "htop.rpm", repo_key), repo_with_keys(tmp_path, repo_key.armored))
    assert capfd.readouterr().err == ""


def test_a_package_signed_with_a_subkey_of_the_repositorys_key_passes(tmp_path: Path) -> None:
    key = make_key(tmp_path / "gpg", "lulayer vendor key <vendor@lulayer.invalid>", signing_subkey=True)
    try:
        check_signature(signed(tmp_path / "htop.rpm", key), repo_with_keys(tmp_path, key.armored))
    finally:
        forget(key)


@pytest.mark.parametrize("layout", ["binary-key", "two-blocks-in-one-file", "two-files"])
def test_the_key_may_be_binary_or_one_of_several(tmp_path: Path, keys: tuple[Key, Key], layout: str) -> None:
    repo_key, other_key = keys
    key_files = {
        "binary-key": [repo_key.binary],
        "two-blocks-in-one-file": [other_key.armored + repo_key.armored],
        "two-files": [other_key.armored, repo_key.armored],
    }[layout]
    check_signature(signed(tmp_path / "htop.rpm", repo_key), repo_with_keys(tmp_path, *key_files))


# --------------------------------------------------------------------------- refused


def test_an_unsigned_package_is_refused(tmp_path: Path, keys: tuple[Key, Key]) -> None:
    repo_key, _ = keys
    path = signed(tmp_path / "htop.rpm", None)
    with pytest.raises(ResolveError) as e:
        check_signature(path, repo_with_keys(tmp_path, repo_key.armored))
    assert e.value.message == f"{path.name} is not signed (repository 'signed' has gpgcheck=1)"


@pytest.mark.parametrize("case", ["other-key", "header-altered", "payload-altered"])
def test_a_bad_or_unknown_signature_is_refused(tmp_path: Path, keys: tuple[Key, Key],
                                               capfd: pytest.CaptureFixture[str], case: str) -> None:
    repo_key, other_key = keys
    path = signed(tmp_path / "htop.rpm", other_key if case == "other-key" else repo_key)
    if case == "header-altered":
        at = path.read_bytes().find(b"htop 3.3.0")  # in the description
        assert 0 < at < header_end(path)
        flip_byte(path, at)
    elif case == "payload-altered":
        flip_byte(path, path.stat().st_size - 1)
    with pytest.raises(ResolveError) as e:
        check_signature(path, repo_with_keys(tmp_path, repo_key.armored))
    assert e.value.message == f"{path.name} has a bad or unknown signature (repository 'signed' has gpgcheck=1)"
    assert capfd.readouterr().err == "", "rpm's own lines reached stderr"


def test_a_repository_without_usable_keys_is_refused(tmp_path: Path, keys: tuple[Key, Key]) -> None:
    repo_key, _ = keys
    path = signed(tmp_path / "htop.rpm", repo_key)
    base = RepoConfig(id="signed", repofile="/etc/yum.repos.d/signed.repo", gpgcheck=True)
    cases = {
        "has gpgcheck=1 but no gpgkey": base,
        "does not exist": RepoConfig(**{**base.__dict__, "gpgkeys": (f"file://{tmp_path}/missing",)}),
        "is not a local file": RepoConfig(**{**base.__dict__, "gpgkeys": ("https://keys.example.invalid/K",)}),
        "is not an OpenPGP public key": repo_with_keys(tmp_path, b"not a key\n"),
    }
    for needle, repo in cases.items():
        with pytest.raises(ResolveError, match=needle):
            check_signature(path, repo)
