"""Checks on downloaded RPMs before anything is written: digest and signature.

Both backends call this, so a package whose bytes differ from what the
repository metadata names, or that a gpgcheck=1 repository's keys did not
sign, is refused the same way whichever resolver fetched it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from lulayer.errors import ResolveError
from lulayer.layering.compose import DROPPED_TOP
from lulayer.layering.resolver import RepoConfig, Resolution
from lulayer.run import run

_HASHES = {"sha256": "sha256", "sha512": "sha512", "sha384": "sha384", "sha224": "sha224",
           "sha1": "sha1", "sha": "sha1", "md5": "md5"}


def file_digest(path: Path, kind: str) -> str:
    h = hashlib.new(_HASHES[kind])
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify_downloads(resolution: Resolution, paths: Sequence[Path]) -> None:
    """Refuse any of paths (the files of resolution.install, in order) whose digest differs from the metadata's,
    that its repository's keys did not sign (gpgcheck=1), or whose payload no image may take."""
    by_id = {r.id: r for r in resolution.repos}
    for resolved, path in zip(resolution.install, paths, strict=True):
        kind, _, expected = resolved.checksum.partition(":")
        if kind not in _HASHES:
            raise ResolveError(f"{resolved.package}: unknown checksum type {kind!r} in the repository metadata")
        actual = file_digest(path, kind)
        if actual != expected:
            raise ResolveError(
                f"{path.name} does not match the repository metadata ({kind} {actual[:16]}..., "
                f"expected {expected[:16]}...)",
                hint="the repository or the cache is corrupt: run `lulayer cleanup --repomd` or fix the repository",
            )
        if by_id[resolved.repo_id].gpgcheck:
            check_signature(path, by_id[resolved.repo_id])
        check_payload(path)


_SPECIAL = ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "fifo"),
            (stat.S_ISSOCK, "socket"))


def check_payload(path: Path) -> None:
    """Refuse a payload no image may take: a path with "..", or a device node, fifo or socket
    (which an OSTree commit cannot hold) where the image would keep it."""
    import rpm

    ts = rpm.TransactionSet()
    ts.setVSFlags(rpm._RPMVSF_NOSIGNATURES | rpm._RPMVSF_NODIGESTS)  # checked above
    try:
        with open(path, "rb") as f:
            hdr = ts.hdrFromFdno(f.fileno())
    except rpm.error as e:
        raise ResolveError(f"{path.name} is not a readable RPM: {e}") from e
    for raw, mode in zip(hdr[rpm.RPMTAG_FILENAMES], hdr[rpm.RPMTAG_FILEMODES], strict=True):
        name = os.fsdecode(raw)
        if ".." in name.split("/"):
            raise ResolveError(f"{path.name} has a file path with '..': {name}",
                               hint="refusing a package whose payload names paths outside its tree")
        # compose drops these folders, so what a package puts there cannot reach the image
        if name.lstrip("/").split("/", 1)[0] in DROPPED_TOP:
            continue
        for test, kind in _SPECIAL:
            if test(mode & 0xFFFF):
                raise ResolveError(f"{path.name} has a {kind} at {name}, which an OSTree image cannot hold",
                                   hint="layer packages whose payload is files, directories and symlinks")


def _key_paths(repo: RepoConfig) -> list[Path]:
    keys: list[Path] = []
    for url in repo.gpgkeys:
        parsed = urlparse(url)
        if parsed.scheme != "file":
            raise ResolveError(f"repository {repo.id!r}: gpgkey {url} is not a local file",
                               hint="ship the key in the image and use a file:// URL")
        keys.append(Path(parsed.path))
    return keys


def check_signature(path: Path, repo: RepoConfig) -> None:
    """Refuse path unless one of repo's keys made a valid signature on it."""
    keys = _key_paths(repo)
    if not keys:
        raise ResolveError(f"repository {repo.id!r} has gpgcheck=1 but no gpgkey",
                           hint="add gpgkey=file:///etc/pki/rpm-gpg/KEY to its .repo file")
    with tempfile.TemporaryDirectory(prefix="lulayer-keys-") as db:
        for key in keys:
            if not key.is_file():
                raise ResolveError(f"repository {repo.id!r}: gpgkey {key} does not exist",
                                   hint="install the key or fix the gpgkey= line")
            run(["rpmkeys", "--define", f"_dbpath {db}", "--import", key])
        proc = run(["rpmkeys", "--define", f"_dbpath {db}", "--checksig", "-v", path], check=False)
    out = proc.stdout + proc.stderr
    lines = [ln.strip() for ln in out.splitlines()]
    signed_ok = any("Signature" in ln and ln.endswith(": OK") for ln in lines)
    if proc.returncode != 0 or not signed_ok or any("BAD" in ln or "NOKEY" in ln for ln in lines):
        reason = "is not signed" if not any("Signature" in ln for ln in lines) else "has a bad or unknown signature"
        raise ResolveError(f"{path.name} {reason} (repository {repo.id!r} has gpgcheck=1)",
                           hint="use packages signed with the repository's gpgkey")
