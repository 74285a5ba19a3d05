"""Mounts: reading the mount table, overlays, and mount namespaces.

On a booted host every command that changes the system writes from a mount
namespace of its own (host_writer_namespace), as rpm-ostreed does: a slave of the
host's, in which /sysroot and /boot are remounted read-write; nobody else sees
them writable. What the running system must see (the live overlay on /usr) is
mounted from a child that joins PID 1's mount namespace (MountNamespace.HOST).

The live overlay needs redirect_dir=on: without it overlayfs refuses to rename a
directory that comes from the lower layer (EXDEV), and the live-apply swap of a
directory with RENAME_EXCHANGE is exactly such a rename.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

from lulayer import linux
from lulayer.errors import LiveApplyError, LulayerError

# Legacy mount(2) data is one page; longer option strings are cut by the kernel.
_MAX_MOUNT_DATA: Final = 4095
_OVERLAY_PARAMS: Final = Path("/sys/module/overlay/parameters")
_OCTAL: Final = re.compile(r"\\([0-7]{3})")
# The per-mount flags a bind remount sets; one it leaves out is cleared.
_MOUNT_FLAGS: Final = {"nosuid": linux.MS_NOSUID, "nodev": linux.MS_NODEV, "noexec": linux.MS_NOEXEC,
                       "noatime": linux.MS_NOATIME, "nodiratime": linux.MS_NODIRATIME,
                       "relatime": linux.MS_RELATIME, "strictatime": linux.MS_STRICTATIME}
# What libostree remounts read-write for a writer in its own mount namespace
# (src/libostree/ostree-sysroot.c _ostree_sysroot_ensure_writable).
HOST_WRITABLE: Final = (Path("/sysroot"), Path("/boot"))
PID1_MOUNT_NAMESPACE: Final = Path("/proc/1/ns/mnt")


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/self/mountinfo."""

    mount_id: int
    parent_id: int
    mountpoint: Path
    fstype: str
    source: str
    options: frozenset[str]  # per-mount options and super-block options, merged
    root: str  # the path inside the file system that is mounted here

    def option(self, key: str) -> str | None:
        """The value of a key=value option, or None when it isn't set."""
        prefix = key + "="
        for o in self.options:
            if o.startswith(prefix):
                return o[len(prefix) :]
        return None


def _unescape(s: str) -> str:
    # The kernel writes space, tab, newline and backslash as \ooo octal.
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), s)


def _split_options(s: str) -> list[str]:
    # Commas inside values are escaped too (\054), so splitting first is safe.
    return [_unescape(o) for o in s.split(",") if o]


def parse_mountinfo(text: str) -> list[MountInfo]:
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split(" ")
        sep = fields.index("-", 6)
        out.append(
            MountInfo(
                mount_id=int(fields[0]),
                parent_id=int(fields[1]),
                root=_unescape(fields[3]),
                mountpoint=Path(_unescape(fields[4])),
                fstype=_unescape(fields[sep + 1]),
                source=_unescape(fields[sep + 2]),
                options=frozenset(
                    _split_options(fields[5]) + _split_options(" ".join(fields[sep + 3 :]))
                ),
            )
        )
    return out


def mounts() -> list[MountInfo]:
    """The mounts this process sees, in the kernel's order (parents first)."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read())


def mount_at(path: Path | str) -> MountInfo | None:
    """The topmost mount whose mountpoint is exactly path."""
    want = Path(os.path.realpath(path))
    found = [m for m in mounts() if m.mountpoint == want]
    if not found:
        return None
    # Stacked mounts: the top one is the one no other mount here sits on.
    parents = {m.parent_id for m in found}
    top = [m for m in found if m.mount_id not in parents]
    return (top or found)[-1]


def _module_default(param: str) -> bool:
    # overlayfs shows an option in mountinfo only when it differs from the default.
    try:
        return (_OVERLAY_PARAMS / param).read_text().strip() == "Y"
    except OSError:
        return False


def is_overlay_with_redirect_dir(info: MountInfo) -> bool:
    """Whether info is an overlay that may rename lower directories (redirect_dir=on)."""
    if info.fstype != "overlay":
        return False
    value = info.option("redirect_dir")
    if value is None:
        return _module_default("redirect_dir")
    return value == "on"


@dataclass(frozen=True)
class OverlayDirs:
    """The layers of an overlay mount."""

    lower: tuple[Path, ...]  # topmost first
    upper: Path | None  # None for a read-only overlay
    work: Path | None


def _split_layer_value(value: str, sep: str | None) -> list[str]:
    # The kernel shows layer paths as they were given, with overlay's "\" escapes.
    parts, cur, it = [], [], iter(value)
    for ch in it:
        if ch == "\\":
            cur.append(next(it, ""))
        elif ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def overlay_dirs(info: MountInfo) -> OverlayDirs:
    """The lower, upper and work directories of an overlay mount."""
    if info.fstype != "overlay":
        raise ValueError(f"{info.mountpoint} is a {info.fstype} mount, not an overlay")
    lower = info.option("lowerdir")
    upper, work = info.option("upperdir"), info.option("workdir")
    return OverlayDirs(
        lower=tuple(Path(p) for p in _split_layer_value(lower, ":")) if lower else (),
        upper=Path(_split_layer_value(upper, None)[0]) if upper else None,
        work=Path(_split_layer_value(work, None)[0]) if work else None,
    )


def _escape_layer(path: Path) -> str:
    # overlayfs splits its options on "," and lowerdir on ":"; both take a "\" escape.
    return re.sub(r"([\\,:])", r"\\\1", os.fspath(path))


def _check_dir(what: str, path: Path) -> os.stat_result:
    try:
        st = os.stat(path)
    except OSError as e:
        raise LiveApplyError(f"overlay {what} {path}: {e.strerror}") from e
    if not os.path.isdir(path):
        raise LiveApplyError(f"overlay {what} {path} is not a directory")
    return st


def mount_overlay(
    target: Path, lower: Path, upper: Path, work: Path, *, redirect_dir: bool = True,
    above: Sequence[Path] = (),
) -> None:
    """Mount an overlay of upper on lower at target, through mount(2); above: read-only layers
    between upper and lower, topmost first.

    index=off: an index ties upper to this exact lower, and live apply remounts the
    same upper over a new lower. metacopy=off: a chmod/chown copies the whole file
    up, so the upper layer holds complete files and can be read without the lower.
    """
    for what, p in [("target", target), *(("lowerdir", a) for a in above), ("lowerdir", lower)]:
        _check_dir(what, p)
    up, wk = _check_dir("upperdir", upper), _check_dir("workdir", work)
    if up.st_dev != wk.st_dev:
        raise LiveApplyError(
            f"overlay workdir {work} is not on the same file system as upperdir {upper}"
        )
    opts = [
        f"lowerdir={':'.join(_escape_layer(p.absolute()) for p in (*above, lower))}",
        f"upperdir={_escape_layer(upper.absolute())}",
        f"workdir={_escape_layer(work.absolute())}",
        f"redirect_dir={'on' if redirect_dir else 'off'}",
        "index=off",
        "metacopy=off",
    ]
    data = ",".join(opts).encode()
    if len(data) > _MAX_MOUNT_DATA:
        raise LiveApplyError(f"overlay options for {target} are too long ({len(data)} bytes)")
    mount("overlay", target, "overlay", data=data.decode(),
          hint="the kernel log (dmesg) says why overlayfs refused it")


def mount(source: str | None, target: Path, fstype: str | None, flags: int = 0, data: str | None = None,
          *, hint: str | None = None) -> None:
    """mount(2); a failure raises LiveApplyError naming the target."""
    try:
        linux.mount(source, target, fstype, flags, data)
    except OSError as e:
        if flags & linux.MS_REMOUNT:
            raise LiveApplyError(f"cannot remount {target}: {e.strerror}", hint=hint) from e
        what = f"an {fstype}" if fstype else "a mount"
        raise LiveApplyError(f"cannot mount {what} on {target}: {e.strerror}", hint=hint) from e


def unmount(target: Path, *, lazy: bool = False) -> None:
    """Unmount target; lazy detaches it now and frees it when no longer busy."""
    try:
        linux.umount2(target, linux.UMOUNT_NOFOLLOW | (linux.MNT_DETACH if lazy else 0))
    except OSError as e:
        if e.errno == errno.EBUSY:
            raise LiveApplyError(f"cannot unmount {target}: it is in use",
                                 hint="stop what uses it, or unmount lazily") from e
        if e.errno == errno.EINVAL:
            raise LiveApplyError(f"cannot unmount {target}: it is not a mount point") from e
        raise LiveApplyError(f"cannot unmount {target}: {e.strerror}") from e


def set_read_only(target: Path, read_only: bool) -> None:
    """Make the mount at target read-only or read-write for this mount namespace alone
    (MS_REMOUNT|MS_BIND: a per-mount flag, never the file system's), keeping its other flags."""
    info = mount_at(target)
    if info is None:
        raise LiveApplyError(f"cannot remount {target}: it is not a mount point")
    flags = linux.MS_REMOUNT | linux.MS_BIND | (linux.MS_RDONLY if read_only else 0)
    for option in info.options:
        flags |= _MOUNT_FLAGS.get(option, 0)
    mount(None, target, None, flags)


def bind_writable(path: Path) -> None:
    """Bind-mount path onto itself, read-write, whatever the mount it is on says (the file
    system itself must be writable)."""
    mount(str(path), path, None, linux.MS_BIND)
    set_read_only(path, False)


class MountNamespace(StrEnum):
    """Where a child's mounts go (run.run_in_child)."""

    INHERITED = "inherited"  # the parent's
    PRIVATE = "private"  # a new one of its own: they vanish with it, even when it is killed
    HOST = "host"  # PID 1's: the running system's, seen by every process


def join_host_mount_namespace() -> None:
    """Join PID 1's mount namespace (a single-threaded process: a forked child)."""
    try:
        fd = os.open(PID1_MOUNT_NAMESPACE, os.O_RDONLY | os.O_CLOEXEC)
        try:
            linux.setns(fd, linux.CLONE_NEWNS)
        finally:
            os.close(fd)
    except OSError as e:
        raise LulayerError(f"cannot join the host's mount namespace ({PID1_MOUNT_NAMESPACE}): {e.strerror}") from e


def host_writer_namespace(writable: Sequence[Path] = HOST_WRITABLE) -> None:
    """Give this process a mount namespace of its own in which the writable paths (each
    mount at or under them) are read-write, whatever they are for the rest of the system.

    As rpm-ostreed (src/daemon/rpm-ostreed.service MountFlags=slave, and
    src/daemon/rpmostreed-transaction.cxx ostree_sysroot_set_mount_namespace_in_use) and
    libostree (src/libostree/ostree-sysroot.c ostree_sysroot_initialize_with_mount_namespace):
    a new namespace, a slave of the host's, so that the host's mounts (the live overlay) still
    reach it and nothing mounted here reaches the host. The remounts are per mount
    (MS_REMOUNT|MS_BIND), where libostree remounts the file system: a read-only /sysroot of the
    host stays read-only for every other process, and after the command there is nothing to undo.
    """
    try:
        linux.unshare(linux.CLONE_NEWNS)
    except OSError as e:
        raise LulayerError(f"cannot make a mount namespace: {e.strerror}") from e
    mount(None, Path("/"), None, linux.MS_REC | linux.MS_SLAVE)
    for m in mounts():
        if "ro" in m.options and any(m.mountpoint == p or p in m.mountpoint.parents for p in writable):
            set_read_only(m.mountpoint, False)


def unshare_mount_namespace() -> None:
    """Give this process a mount namespace of its own, with / private in it, so that
    nothing mounted from now on propagates out."""
    try:
        linux.unshare(linux.CLONE_NEWNS)
    except OSError as e:
        raise LulayerError(f"cannot make a mount namespace: {e.strerror}") from e
    mount(None, Path("/"), None, linux.MS_REC | linux.MS_PRIVATE)
