"""Local RPM files layered as rpm-ostree layers them ("LocalPackages"): pinned to that build,
and kept in the OSTree repository so that every later deployment re-layers it after the
file itself is gone.

rpm-ostree records a local package in the origin as `[packages] requested-local=SHA256:NEVRA`
(rust/src/origin.rs parse_localpkglist), SHA256 being the digest of the file's lead,
signature and header, what its importer calls the metadata (src/libpriv/rpmostree-importer.cxx
build_metadata_variant, rpmostree.metadata_sha256; src/daemon/rpmostreed-transaction-types.cxx
import_local_rpm joins it to the NEVRA). It keeps the package unpacked under the ref
rpmostree/pkg/NAME/EVR.ARCH (src/libpriv/rpmostree-rpm-util.cxx get_branch_for_n_evr_a, with
append_quoted's escaping) and trusts whatever a local package's ref holds
(rpmostree-core.cxx find_pkg_in_ostree). lulayer needs the RPM itself for its rpm transaction,
so it stores the file, in a commit of its own under lulayer/pkg/ with the same escaping: a
tree rpm-ostree would take for an unpacked package must not sit under its ref.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import rpm
from gi.repository import Gio, GLib, OSTree

from lulayer.errors import LulayerError, ResolveError
from lulayer.layering.verify import _rpm_log, payload_matches
from lulayer.rpmdb.model import Package
from lulayer.sysroot import Origin

REF_PREFIX = "lulayer/pkg/"
CACHE_DIR = "local"  # under the sysroot's cache: the stored files taken out for a transaction
_LEAD_SIZE = 96
_HEADER_MAGIC = b"\x8e\xad\xe8\x01"
_ENTRY = re.compile(r"(?P<sha256>[0-9a-f]{64}):(?P<nevra>\S+)")


@dataclass(frozen=True)
class LocalPackage:
    package: Package
    sha256: str  # of the lead, signature and header, as rpm-ostree names a local package

    @property
    def entry(self) -> str:
        """The origin's `requested-local` entry."""
        return f"{self.sha256}:{self.package.nevra}"

    @property
    def ref(self) -> str:
        p = self.package
        return f"{REF_PREFIX}{_quoted(p.name)}/{_quoted(p.evr.removeprefix('0:'))}.{_quoted(p.arch)}"


def is_local_spec(spec: str) -> bool:
    """A request that names an RPM file rather than a package, as rpm-ostree tells them apart
    (rust/src/client.rs: an argument ending in .rpm or starting with file://)."""
    return spec.endswith(".rpm") or spec.startswith("file://")


def local_path(spec: str) -> Path:
    """The file a local spec names."""
    return Path(spec.removeprefix("file://"))


def parse_entry(entry: str) -> tuple[str, str]:
    """SHA256 and NEVRA of a `requested-local` entry."""
    m = _ENTRY.fullmatch(entry)
    if not m:
        raise LulayerError(f"the origin's requested-local entry {entry!r} is not SHA256:NEVRA",
                           hint="fix the deployment's .origin")
    return m["sha256"], m["nevra"]


def _quoted(value: str) -> str:
    """rpm-ostree's append_quoted: alphanumerics, '.' and '-' as they are, '_' doubled, the rest _XX."""
    out = []
    for c in value:
        if c.isascii() and (c.isalnum() or c in ".-"):
            out.append(c)
        elif c == "_":
            out.append("__")
        else:
            out.extend(f"_{b:02X}" for b in c.encode())
    return "".join(out)


def _metadata_size(path: Path) -> int:
    """Where the payload begins: after the lead, the signature header (padded to 8 bytes) and the header."""
    with open(path, "rb") as f:
        if f.read(_LEAD_SIZE)[:4] != b"\xed\xab\xee\xdb":
            raise ValueError("no rpm lead")

        def header_end(off: int) -> int:  # a header: a 16-byte intro, 16 bytes an index entry, its store
            f.seek(off)
            intro = f.read(16)
            if len(intro) < 16 or intro[:4] != _HEADER_MAGIC:
                raise ValueError("no rpm header")
            nindex, hsize = struct.unpack(">II", intro[8:16])
            return off + 16 + 16 * int(nindex) + int(hsize)

        sig_end = header_end(_LEAD_SIZE)
        end = header_end(sig_end + (-sig_end % 8))
        if end > os.fstat(f.fileno()).st_size:
            raise ValueError("truncated")
    return end


def read_local(spec: str) -> LocalPackage:
    """The package in the RPM file spec, refused in one line unless it is a whole RPM of this
    machine's architecture (or noarch). Signatures are checked with the repositories' keys
    later (verify.verify_downloads), when the repositories are known."""
    path = local_path(spec)
    if not path.is_file():
        raise LulayerError(f"{spec}: no such file", hint="name an existing .rpm file, or a package without .rpm")
    try:
        size = _metadata_size(path)
    except (ValueError, struct.error) as e:
        raise LulayerError(f"{spec} is not an RPM file ({e})", hint="name an .rpm package file") from e
    ts = rpm.TransactionSet()
    ts.setVSFlags(rpm._RPMVSF_NOSIGNATURES)  # digests only: signatures are the repositories' business
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _rpm_log() as said:
            try:
                hdr = ts.hdrFromFdno(fd)
            except rpm.error as e:
                why = next((w for w in said().split("error: ") if "BAD" in w), str(e)).strip()
                raise LulayerError(f"{spec} is corrupt: its header does not match its digests ({why})",
                                   hint="download the package again") from e
        if not payload_matches(fd, hdr, undigested=True):  # nothing to check an older package against
            raise LulayerError(f"{spec} is corrupt: its payload does not match the digest its header names",
                               hint="download the package again")
    finally:
        os.close(fd)
    pkg = Package(hdr[rpm.RPMTAG_NAME], hdr[rpm.RPMTAG_EPOCH] or 0, hdr[rpm.RPMTAG_VERSION],
                  hdr[rpm.RPMTAG_RELEASE], hdr[rpm.RPMTAG_ARCH] or "noarch")
    machine = os.uname().machine
    if hdr[rpm.RPMTAG_SOURCEPACKAGE] or pkg.arch not in ("noarch", machine):
        raise LulayerError(f"{spec} is built for {pkg.arch if not hdr[rpm.RPMTAG_SOURCEPACKAGE] else 'source'}, "
                           f"not for this machine ({machine})", hint=f"use the package built for {machine} or noarch")
    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read(size)).hexdigest()
    return LocalPackage(pkg, sha)


def _file_name(nevra: str) -> str:
    return f"{nevra}.rpm"


def cached_name(entry: str) -> str:
    """The file name a requested-local entry's RPM has in the cache and in its commit."""
    return _file_name(parse_entry(entry)[1])


def store(repo: OSTree.Repo, path: Path, local: LocalPackage) -> None:
    """Keep the RPM file in the repository under local.ref (once: the same build, the same ref)."""
    _, have = repo.resolve_rev(local.ref, True)
    if have is not None and _stored_sha256(repo, have) == local.sha256:
        return
    try:
        repo.prepare_transaction(None)
        mtree = OSTree.MutableTree.new()
        info = Gio.FileInfo()
        for attr, value in (("unix::uid", 0), ("unix::gid", 0), ("unix::mode", 0o40755)):
            info.set_attribute_uint32(attr, value)
        _, dirmeta = repo.write_metadata(OSTree.ObjectType.DIR_META, None,
                                         OSTree.create_directory_metadata(info, None), None)
        mtree.set_metadata_checksum(OSTree.checksum_from_bytes(dirmeta))
        csum = repo.write_regfile_inline(None, 0, 0, 0o100644, None, path.read_bytes(), None)
        mtree.replace_file(_file_name(local.package.nevra), csum)
        _, root = repo.write_mtree(mtree, None)
        meta = GLib.VariantDict.new(None)
        meta.insert_value("lulayer.local.sha256", GLib.Variant("s", local.sha256))
        meta.insert_value("lulayer.local.nevra", GLib.Variant("s", local.package.nevra))
        _, commit = repo.write_commit(None, f"lulayer: local package {local.package.nevra}", None, meta.end(),
                                      root, None)
        repo.transaction_set_ref(None, local.ref, commit)
        repo.commit_transaction(None)
    except GLib.Error as e:
        repo.abort_transaction(None)
        raise LulayerError(f"cannot store {path.name} in the OSTree repository: {e.message}") from e


def _stored_sha256(repo: OSTree.Repo, commit: str) -> str | None:
    _, variant = repo.load_variant(OSTree.ObjectType.COMMIT, commit)
    value = variant.get_child_value(0).lookup_value("lulayer.local.sha256", GLib.VariantType("s"))
    return value.get_string() if value is not None else None


def retrieve(repo: OSTree.Repo, entry: str, dest_dir: Path) -> tuple[LocalPackage, Path]:
    """The RPM file an origin's requested-local entry names, out of the repository into dest_dir."""
    sha, nevra = parse_entry(entry)
    dest = dest_dir / _file_name(nevra)
    if dest.is_file():
        local = read_local(str(dest))
        if local.sha256 == sha:
            return local, dest
    ref = LocalPackage(package_of(nevra), sha).ref
    _, commit = repo.resolve_rev(ref, True)
    if commit is None or _stored_sha256(repo, commit) != sha:
        raise ResolveError(f"the local package {nevra} is not in the OSTree repository any more",
                           hint=f"give its file again (`lulayer install ./{_file_name(nevra)}`, or `lulayer override "
                                f"replace` for a base replacement), or drop it (`uninstall`, `override reset`)")
    dest_dir.mkdir(parents=True, exist_ok=True)
    _, root, _ = repo.read_commit(commit, None)
    source = root.get_child(_file_name(nevra))
    source.ensure_resolved()
    _, stream, _info, _xattrs = repo.load_file(source.get_checksum(), None)
    tmp = dest_dir / f".{dest.name}.tmp"
    with open(tmp, "wb") as out:
        while chunk := stream.read_bytes(1 << 20, None).get_data():
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    stream.close(None)
    os.rename(tmp, dest)
    local = read_local(str(dest))
    if local.sha256 != sha:
        raise ResolveError(f"the local package {nevra} in the OSTree repository is not the one the origin names",
                           hint="install its file again")
    return local, dest


def stored_entries(origin: Origin) -> tuple[str, ...]:
    """The SHA256:NEVRA entries of origin whose files are stored: `[packages] requested-local`
    and `[overrides] replace-local`."""
    return (*origin.requested_local, *origin.overrides.replace_local)


def drop_unused(repo: OSTree.Repo, origins: Sequence[Origin]) -> tuple[str, ...]:
    """Delete the refs of stored local packages no origin requests (as rpm-ostree drops the
    pkgcache refs no deployment needs: src/daemon/rpmostree-sysroot-core.cxx); return them."""
    wanted = {e for o in origins for e in stored_entries(o)}
    _, refs = repo.list_refs(REF_PREFIX.rstrip("/"), None)
    dropped = []
    for ref in sorted(refs):
        full = ref if ref.startswith(REF_PREFIX) else f"{REF_PREFIX}{ref}"
        commit = refs[ref]
        _, variant = repo.load_variant(OSTree.ObjectType.COMMIT, commit)
        nevra = variant.get_child_value(0).lookup_value("lulayer.local.nevra", GLib.VariantType("s"))
        entry = f"{_stored_sha256(repo, commit)}:{nevra.get_string() if nevra is not None else ''}"
        if entry not in wanted:
            repo.set_ref_immediate(None, full, None, None)
            dropped.append(full)
    return tuple(dropped)


def package_of(nevra: str) -> Package:
    """The package a NEVRA names (as Package.nevra writes it)."""
    nevr, _, arch = nevra.rpartition(".")
    name, version, release = nevr.rsplit("-", 2)
    epoch, _, version = version.rpartition(":")
    return Package(name, int(epoch or 0), version, release, arch)
