"""Checks on downloaded RPMs before anything is written: digest and signature.

Both backends call this, so a package whose bytes differ from what the
repository metadata names, or that a gpgcheck=1 repository's keys did not
sign, is refused the same way whichever resolver fetched it. Signatures are
checked with rpm's own keyring API, on a keyring that holds only the
repository's gpgkey files from the tree.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import rpm

from lulayer.errors import ResolveError
from lulayer.layering.compose import DROPPED_TOP
from lulayer.layering.resolver import LOCAL_REPO_ID, RepoConfig, Resolution
from lulayer.rpmdb.db import dbpath_macro

log = logging.getLogger(__name__)

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
        if resolved.repo_id == LOCAL_REPO_ID:
            check_local_signature(path, resolution.repos)
        elif by_id[resolved.repo_id].gpgcheck:
            check_signature(path, by_id[resolved.repo_id])
        check_payload(path)


_SPECIAL = ((stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "fifo"),
            (stat.S_ISSOCK, "socket"))


def check_payload(path: Path) -> None:
    """Refuse a payload no image may take: a path with "..", or a device node, fifo or socket
    (which an OSTree commit cannot hold) where the image would keep it."""
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


# OpenPGP hash algorithm numbers (RFC 4880 9.4), as RPMTAG_PAYLOADDIGESTALGO gives them.
_PGP_HASHES = {1: "md5", 2: "sha1", 8: "sha256", 9: "sha384", 10: "sha512", 11: "sha224"}
# Signatures over the header alone, which rpm checks when it reads a header; rpm 4.20 adds RPMTAG_OPENPGP.
_HEADER_SIGNATURES = tuple(getattr(rpm, t) for t in ("RPMTAG_RSAHEADER", "RPMTAG_DSAHEADER", "RPMTAG_OPENPGP")
                           if hasattr(rpm, t))
# Signatures over header and payload (rpm < 4.1 made only these); rpm checks them only with the payload.
_LEGACY_SIGNATURES = (rpm.RPMTAG_SIGPGP, rpm.RPMTAG_SIGGPG)
_ARMOR_BEGIN = b"-----BEGIN PGP PUBLIC KEY BLOCK-----"
_ARMOR_END = b"-----END PGP PUBLIC KEY BLOCK-----"
_SIGNED_HINT = "use packages signed with the repository's gpgkey"


def check_signature(path: Path, repo: RepoConfig) -> None:
    """Refuse path unless one of repo's keys made a valid signature on it.

    rpm checks the header's signature against the keyring as it reads the
    header; the signed header names the payload's digest, checked here on the
    bytes that follow it, so nothing of the file is left unsigned.
    """
    with _verifier(repo) as ts:
        _check_signed(path, repo, ts)


def check_local_signature(path: Path, repos: Sequence[RepoConfig]) -> None:
    """A local RPM file where the enabled repositories require signatures: signed with one of their keys."""
    checked = [r for r in repos if r.gpgcheck]
    if checked:
        check_signature(path, RepoConfig(id=", ".join(r.id for r in checked), repofile="", gpgcheck=True,
                                         gpgkeys=tuple(dict.fromkeys(k for r in checked for k in r.gpgkeys))))


def _check_signed(path: Path, repo: RepoConfig, ts: Any) -> None:
    ts.setVSFlags(0)  # every digest and signature rpm can check on a header
    unsigned = ResolveError(f"{path.name} is not signed (repository {repo.id!r} has gpgcheck=1)", hint=_SIGNED_HINT)
    bad = ResolveError(f"{path.name} has a bad or unknown signature (repository {repo.id!r} has gpgcheck=1)",
                       hint=_SIGNED_HINT)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _rpm_log() as said:
            try:
                hdr = ts.hdrFromFdno(fd)
            except rpm.error as e:
                log.debug("rpm refused %s: %s (%s)", path, e, said())
                raise bad from e
        if not any(hdr[tag] for tag in _HEADER_SIGNATURES):
            raise bad if any(hdr[tag] for tag in _LEGACY_SIGNATURES) else unsigned
        # rpm leaves the file offset where the header ends: the payload follows.
        if not payload_matches(fd, hdr):
            log.debug("%s: the payload differs from the digest its signed header names", path)
            raise bad
    finally:
        os.close(fd)


def payload_matches(fd: int, hdr: Any, *, undigested: bool = False) -> bool:
    """The bytes from fd's offset on (the payload, once rpm has read the header) against the payload
    digest the header names; a package from before rpm 4.14 names none: undigested is the answer."""
    algo = _PGP_HASHES.get(hdr[rpm.RPMTAG_PAYLOADDIGESTALGO] or 0)
    expected = hdr[rpm.RPMTAG_PAYLOADDIGEST] or []
    if algo is None or not expected:
        return undigested
    h = hashlib.new(algo)
    while chunk := os.read(fd, 1 << 20):
        h.update(chunk)
    return h.hexdigest() in expected


@contextmanager
def _rpm_log() -> Iterator[Callable[[], str]]:
    """Keep rpm's own lines ("... Signature, key ID ...: NOKEY") off stderr; the caller says what failed."""
    with tempfile.TemporaryFile(mode="w+") as f:
        rpm.setLogFile(f)

        def said() -> str:
            f.seek(0)
            return " ".join(f.read().split())

        try:
            yield said
        finally:
            rpm.setLogFile(sys.stderr)


@contextmanager
def _verifier(repo: RepoConfig) -> Iterator[Any]:
    """A transaction set whose keyring holds repo's gpgkey files and nothing else.

    The keys are imported into a throwaway rpmdb, as `rpmkeys --import` does:
    rpm 4.18's python keyring.addKey takes a primary key only, and vendors
    (Google's, among others) sign with a subkey, which the import adds too.
    """
    keys = _key_paths(repo)
    if not keys:
        raise ResolveError(f"repository {repo.id!r} has gpgcheck=1 but no gpgkey",
                           hint="add gpgkey=file:///etc/pki/rpm-gpg/KEY to its .repo file")
    with tempfile.TemporaryDirectory(prefix="lulayer-keys-") as db, dbpath_macro(db):
        ts = rpm.TransactionSet()
        ts.initDB()
        try:
            for key in keys:
                if not key.is_file():
                    raise ResolveError(f"repository {repo.id!r}: gpgkey {key} does not exist",
                                       hint="install the key or fix the gpgkey= line")
                blocks = _key_blocks(key.read_bytes())
                if not blocks or any(ts.pgpImportPubkey(block) != 0 for block in blocks):
                    raise ResolveError(f"repository {repo.id!r}: gpgkey {key} is not an OpenPGP public key",
                                       hint="install the key or fix the gpgkey= line")
        finally:
            ts.closeDB()
        verifier = rpm.TransactionSet()  # reads the keyring from the database just written
        try:
            yield verifier
        finally:
            verifier.closeDB()


def _key_paths(repo: RepoConfig) -> list[Path]:
    keys: list[Path] = []
    for url in repo.gpgkeys:
        parsed = urlparse(url)
        if parsed.scheme != "file":
            raise ResolveError(f"repository {repo.id!r}: gpgkey {url} is not a local file",
                               hint="ship the key in the image and use a file:// URL")
        keys.append(Path(parsed.path))
    return keys


def _key_blocks(data: bytes) -> list[bytes]:
    """The binary OpenPGP packets of each key in a key file: armored blocks (a file may hold
    several) or binary."""
    if _ARMOR_BEGIN not in data:
        return [data]
    blocks = []
    for block in data.split(_ARMOR_BEGIN)[1:]:
        # Armor headers end at the first empty line; the body is base64; "=XXXX" is its CRC.
        _, _, body = block.partition(_ARMOR_END)[0].replace(b"\r", b"").partition(b"\n\n")
        lines = [ln for ln in body.split() if not ln.startswith(b"=")]
        try:
            blocks.append(base64.b64decode(b"".join(lines), validate=True))
        except ValueError:
            return []
    return blocks
