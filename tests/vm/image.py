"""Build the VM test image: a booted-ready Debian OSTree host on an ext4 disk.

What it makes, cached in ``.cache/vm/image-<hash>/`` (the hash covers this file,
``debian-base.spec`` and ``guest/*``; ``image-<guest>-<hash>/`` for a guest other
than the default), after ../shared/design/vm-testing.md:

* ``disk-CONFIG.raw`` for each host configuration (``HostConfig``): a sparse raw
  disk, one ext4 file system labelled ``lulayer-vm`` holding an OSTree sysroot
  (``ostree admin init-fs``, ``os-init debian``) with one deployment of the same
  tree. Tests never write it: each boots a qcow2 overlay of it (see runner.py).

  - ``today`` (the default), the host Fedora CoreOS, Silverblue and bootc are now:
    the deployment follows a container image (``[origin]
    container-image-reference=`` fixtures.build.IMAGE_REFERENCE), its commit stored as
    ostree-ext stores a pulled image (a layer under ``ostree/container/blob/``, the merge
    commit under ``ostree/container/image/...``, no ostree ref: fixtures.build._write_image);
    and ``[sysroot] readonly=true`` in the repository's config, so that ostree-prepare-root
    and ostree-remount (ostree 2022.7, Debian 12's: src/switchroot/ostree-prepare-root.c
    sysroot_is_configured_ro, ostree-remount.c) mount ``/sysroot`` read-only, with ``/etc``
    and ``/var`` read-write bind mounts.
  - ``legacy``: the ref ``debian/12/x86_64/lulayer-vm`` in ``[origin] refspec``, and
    ``/sysroot`` read-write (ostree's default).
* ``boot-CONFIG/``: a copy of that disk's ``/boot`` (``loader/entries/*.conf`` and the
  kernel and initramfs they name), what qemu's ``-kernel/-initrd/-append`` need
  for the first boot.

The tree: debootstrap minbase with systemd, then in a chroot the kernel, dracut
with ostree's module (a trimmed, non-host-only initramfs), ostree, and what
lulayer needs (rpm, python3-rpm, python3-dnf, python3-gi, gir1.2-ostree-1.0,
python3-click), and ansible-core for the Ansible module's test. Laid out as
rpm-ostree lays out a commit: kernel and initramfs in ``/usr/lib/modules/KVER``,
``/etc`` in ``/usr/etc``, ``/var`` empty, an
rpmdb at ``/usr/share/rpm`` (``/usr/lib/sysimage/rpm`` links to it,
``macros.rpm-ostree`` names it) holding ``debian-base``, a package with no
files that provides what the Debian base has (``/bin/sh``...).
``/etc/yum.repos.d/lulayer-fixtures.repo`` points at ``/run/lulayer-vm/repo``,
where each boot mounts the fixture repository (a 9p share). The service
``lulayer-vm-test.service`` runs the boot's script from the 9p share ``share``.

Two guests (``Guest``): ``DEFAULT``, Debian 12 as above, and ``COMPOSEFS``, Debian
forky (testing) whose root is a composefs mount, with the ``today`` disk only. Debian
12's and 13's ostree are built without composefs; forky's (2026.4) has it. There
``/usr/lib/ostree/prepare-root.conf`` says ``[composefs] enabled = yes`` (in the commit,
and in the initramfs through ostree's dracut module, which adds erofs and overlay), and
the deployment is made by forky's own ostree, run in a hardlinked copy of the tree made
before it is laid out, so that it gets its composefs image (``.ostree.cfs``). No
fs-verity: ``enabled = yes`` does not ask for it, as ``signed`` would.

    python -m tests.vm.image [forky-composefs]    # build (or reuse) the image, print its folder
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from fixtures import build as fx

HERE = Path(__file__).resolve().parent
# lulayer's shutdown hook for staged deployments, installed as a package would.
FINALIZE_UNIT = HERE.parent.parent / "lulayer" / "systemd" / "lulayer-finalize.service"
GUEST_LULAYER = "/run/lulayer-vm/bin/lulayer"  # written each boot by runner.py's guest.sh
CACHE = Path(os.environ.get("LULAYER_VM_CACHE") or (HERE.parent.parent / ".cache" / "vm")).absolute()
MIRROR = os.environ.get("LULAYER_VM_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
OSNAME = "debian"
REF = "debian/12/x86_64/lulayer-vm"
VERSION = "12.lulayer-vm"
LABEL = "lulayer-vm"
DISK_SIZE = "6G"
GUEST_REPO = "/run/lulayer-vm/repo"  # where each boot mounts the fixture repository
KARGS = (f"root=LABEL={LABEL}", "rw", "console=ttyS0", "loglevel=4")

# debootstrap --include: the kernel and dracut conflict with initramfs-tools there.
DEBOOTSTRAP_INCLUDE = ("systemd-sysv", "udev", "python3", "kmod", "iproute2", "mount")
# ansible-core: tests/vm/test_vm.py runs the lulayer_pkg module in the guest against the booted host;
# procps: its `ps -o user` says which user a service runs as.
CHROOT_PACKAGES = ("dracut", "ostree", "ostree-boot", "rpm", "python3-rpm", "python3-dnf", "python3-gi",
                   "gir1.2-ostree-1.0", "python3-click", "ansible-core", "procps")
KERNEL_PACKAGE = "linux-image-amd64"
DRACUT_MODULES = "systemd systemd-initrd dracut-systemd ostree base rootfs-block fs-lib udev-rules kernel-modules"
DRACUT_DRIVERS = "virtio_blk virtio_pci virtio_ring virtio ext4 jbd2 mbcache crc16 crc32c_generic crc32c_intel"

# The stateroot's /var folders that rpm-ostree's layout (fixtures.build.ostree_layout) links to.
VAR_DIRS = {"home": 0o755, "roothome": 0o700, "mnt": 0o755, "opt": 0o755, "srv": 0o755,
            "usrlocal": 0o755, "tmp": 0o1777, "lib": 0o755, "cache": 0o755, "log": 0o755}


class HostConfig(StrEnum):
    """How the VM's host is set up (see the module docstring)."""

    TODAY = "today"  # container-image origin, read-only /sysroot
    LEGACY = "legacy"  # refspec origin, read-write /sysroot

    @property
    def container_origin(self) -> bool:
        return self is HostConfig.TODAY

    @property
    def readonly_sysroot(self) -> bool:
        return self is HostConfig.TODAY

    @property
    def origin_line(self) -> str:
        """How lulayer status names what the booted deployment follows."""
        return fx.IMAGE_REFERENCE if self.container_origin else REF


@dataclass(frozen=True)
class Guest:
    """What the image is built from: a Debian release, with or without a composefs root."""

    name: str  # in the cache folder's name
    suite: str
    version: str  # in the commit's version and subject
    configs: tuple[HostConfig, ...] = tuple(HostConfig)  # a disk for each
    composefs: bool = False
    # The debootstrap script, for a suite the host's debootstrap does not know by name.
    script: str | None = None


DEFAULT = Guest("bookworm", SUITE, "12")
# Debian 14 "forky"; debootstrap 1.0.128 (Debian 12's) knows it through sid's script.
COMPOSEFS = Guest("forky-composefs", "forky", "14", configs=(HostConfig.TODAY,), composefs=True,
                  script="/usr/share/debootstrap/scripts/sid")
GUESTS = {g.name: g for g in (DEFAULT, COMPOSEFS)}
# ostree-prepare-root's configuration in the composefs guest: composefs required, not signed.
PREPARE_ROOT_CONF = "[composefs]\nenabled = yes\n"


class ImageError(RuntimeError):
    """The image could not be built; the message says which step and why."""


def log(msg: str) -> None:
    print(f"[vm-image] {msg}", file=sys.stderr, flush=True)


def _run(cmd: Sequence[str | os.PathLike[str]], env: dict[str, str] | None = None) -> str:
    full_env = dict(os.environ, LC_ALL="C", LANG="C", DEBIAN_FRONTEND="noninteractive", **(env or {}))
    proc = subprocess.run([os.fspath(c) for c in cmd], capture_output=True, text=True, env=full_env, check=False)
    if proc.returncode != 0:
        raise ImageError(f"{' '.join(os.fspath(c) for c in cmd)} exited {proc.returncode}\n"
                         f"--- stdout\n{proc.stdout[-4000:]}--- stderr\n{proc.stderr[-4000:]}")
    return str(proc.stdout)


def inputs_hash() -> str:
    h = hashlib.sha256()
    # fixtures/build.py lays the tree out (ostree_layout).
    for f in sorted([Path(__file__), Path(fx.__file__), HERE / "debian-base.spec", FINALIZE_UNIT,
                     *(HERE / "guest").iterdir()]):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def missing_host_tools() -> list[str]:
    """The host commands the image build and the runner need that are not installed."""
    tools = ("qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4", "ostree", "rpmbuild", "rpm")
    return [t for t in tools if shutil.which(t) is None and not Path(f"/usr/sbin/{t}").exists()]


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".image.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _chroot_mounts(root: Path) -> Iterator[None]:
    done: list[Path] = []
    try:
        for src, opts in (("/proc", ["-t", "proc", "proc"]), ("/sys", ["--rbind", "/sys"]),
                          ("/dev", ["--rbind", "/dev"])):
            target = root / src.lstrip("/")
            _run(["mount", *opts, target])
            done.append(target)
            if opts[0] == "--rbind":
                _run(["mount", "--make-rslave", target])
        yield
    finally:
        for target in reversed(done):
            subprocess.run(["umount", "-R", "-l", target], check=False)


def _chroot(root: Path, *cmd: str) -> str:
    # The caller's TMPDIR (a test run's own) does not exist in the chroot: maintainer scripts fail on it.
    return _run(["chroot", root, *cmd], env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR": "/tmp"})


def _debootstrap(guest: Guest, root: Path) -> None:
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(DEBOOTSTRAP_INCLUDE)}", guest.suite, root,
          MIRROR, *([guest.script] if guest.script else [])])


def _install_packages(guest: Guest, root: Path) -> str:
    """The kernel, dracut, ostree and lulayer's needs; returns the kernel version."""
    # No service starts in the chroot.
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    # The kernel's postinst runs dracut: make that the trimmed, generic initramfs at once.
    conf = root / "etc/dracut.conf.d/10-lulayer-vm.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(f'hostonly="no"\ndracutmodules+=" {DRACUT_MODULES} "\ndrivers+=" {DRACUT_DRIVERS} "\n'
                    'compress="gzip"\n')
    update = ["apt-get", "update", "-q"]
    if guest.composefs:
        # Before dracut runs: ostree's dracut module copies it into the initramfs.
        (root / "usr/lib/ostree").mkdir(parents=True, exist_ok=True)
        (root / "usr/lib/ostree/prepare-root.conf").write_text(PREPARE_ROOT_CONF)
        # The mirror's testing Release can be older than its Valid-Until allows; debootstrap does not check it.
        update.insert(1, "-o=Acquire::Check-Valid-Until=false")
    with _chroot_mounts(root):
        _chroot(root, *update)
        _chroot(root, "apt-get", "install", "-y", "-q", "--no-install-recommends", *CHROOT_PACKAGES)
        _chroot(root, "apt-get", "install", "-y", "-q", "--no-install-recommends", KERNEL_PACKAGE)
        kvers = [p.name for p in (root / "usr/lib/modules").iterdir() if (p / "modules.dep").exists()]
        if len(kvers) != 1:
            raise ImageError(f"expected one kernel in the image, found {kvers}")
        kver = kvers[0]
        # Explicitly, in case the postinst ran before ostree's dracut module was unpacked.
        _chroot(root, "dracut", "--force", "--no-hostonly", "-m", DRACUT_MODULES, "--drivers", DRACUT_DRIVERS,
                f"/usr/lib/modules/{kver}/initramfs.img", kver)
        _chroot(root, "apt-get", "clean")
    policy.unlink()
    kernel = root / f"usr/lib/modules/{kver}/vmlinuz"
    if not kernel.exists():  # forky's kernel package ships it there already (a hardlink of /boot's)
        shutil.copy2(root / f"boot/vmlinuz-{kver}", kernel)
    return kver


def _guest_files(root: Path) -> None:
    driver = root / "usr/libexec/lulayer-vm-driver"
    driver.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(HERE / "guest/lulayer-vm-driver", driver)
    driver.chmod(0o755)
    unit = root / "etc/systemd/system/lulayer-vm-test.service"
    shutil.copy2(HERE / "guest/lulayer-vm-test.service", unit)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / unit.name).symlink_to(f"/etc/systemd/system/{unit.name}")
    # lulayer runs from the project share here, not /usr/bin: point the hook at it and
    # keep the share mounted until the hook has run at shutdown.
    hook = FINALIZE_UNIT.read_text().replace("ExecStop=/usr/bin/lulayer", f"ExecStop={GUEST_LULAYER}")
    hook = hook.replace("RequiresMountsFor=/sysroot /boot", "RequiresMountsFor=/sysroot /boot /run/lulayer-vm/project")
    (root / "etc/systemd/system" / FINALIZE_UNIT.name).write_text(hook)
    shutil.copy2(HERE / "guest/lulayer-vm-bootcopy.service", root / "etc/systemd/system")
    (root / "etc/hostname").write_text("lulayer-vm\n")
    (root / "etc/fstab").write_text("# the root file system comes from the kernel command line (ostree)\n")
    (root / "etc/machine-id").write_text("")
    repo = root / "etc/yum.repos.d/lulayer-fixtures.repo"
    repo.parent.mkdir(parents=True, exist_ok=True)
    repo.write_text(f"[{fx.REPO_ID}]\nname=lulayer fixtures (9p share)\nbaseurl=file://{GUEST_REPO}\n"
                    "enabled=1\ngpgcheck=0\n")
    tmpfiles = root / "usr/lib/tmpfiles.d/lulayer-vm-var.conf"
    tmpfiles.write_text("".join(f"d /var/{name} {mode:04o} root root -\n" for name, mode in VAR_DIRS.items()))


def _base_rpmdb(root: Path, work: Path) -> None:
    top = work / "rpmbuild"
    fx._rpmbuild(HERE / "debian-base.spec", top)
    rpms = sorted(top.glob("RPMS/*/debian-base-*.rpm"))
    if len(rpms) != 1:
        raise ImageError(f"rpmbuild of debian-base.spec made {rpms}")
    fx._compose_base(root, rpms)  # rpm -i into root at /usr/share/rpm, sqlite, no WAL
    shutil.rmtree(top)


def _deploy(guest: Guest, tools: Path | None, dest: Path, *args: str) -> None:
    """ostree admin deploy ARGS into the sysroot DEST (ARGS name files in DEST as {sysroot}/...):
    by the host's ostree, or for a composefs guest by its own in TOOLS, DEST bound into it, so
    that the deployment gets its composefs image. Without CAP_SYS_ADMIN (no FIFREEZE of the
    host's file system; fixtures.build.ostree_admin says why)."""
    if not guest.composefs:
        fx.ostree_admin(dest, "deploy", *(a.format(sysroot=dest) for a in args))
        return
    assert tools is not None
    inside = Path("/run/lulayer-vm-build/sysroot")
    mnt = tools / inside.relative_to("/")
    mnt.mkdir(parents=True, exist_ok=True)
    with _chroot_mounts(tools):
        _run(["mount", "--bind", dest, mnt])
        try:
            _run(["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", "chroot", tools,
                  "ostree", "admin", f"--sysroot={inside}", "deploy", *(a.format(sysroot=inside) for a in args)],
                 env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR": "/tmp"})
        finally:
            subprocess.run(["umount", mnt], check=False)


def _sysroot(guest: Guest, dest: Path, tree: Path, config: HostConfig, tools: Path | None) -> None:
    dest.mkdir()
    repo = dest / "ostree/repo"
    version = f"{guest.version}.lulayer-vm"
    _run(["ostree", "admin", "init-fs", dest])
    _run(["ostree", "admin", f"--sysroot={dest}", "os-init", OSNAME])
    _run(["ostree", f"--repo={repo}", "commit", f"--branch={REF}", f"--tree=dir={tree}", "--no-xattrs",
          f"--add-metadata-string=version={version}",
          f"--subject=Debian {guest.version} OSTree host (lulayer VM tests)", "--fsync=false"])
    kargs = [f"--karg={k}" for k in KARGS]
    if not config.container_origin:
        _deploy(guest, tools, dest, f"--os={OSNAME}", *kargs, REF)
    else:
        base = _run(["ostree", f"--repo={repo}", "rev-parse", REF]).strip()
        merge = fx._write_image(repo, [base], version=version, created=fx.IMAGE_CREATED)
        _run(["ostree", f"--repo={repo}", "refs", "--delete", REF])
        origin = dest / ".origin.tmp"
        origin.write_text(f"[origin]\ncontainer-image-reference={fx.IMAGE_REFERENCE}\n")
        _deploy(guest, tools, dest, f"--os={OSNAME}", *kargs, "--origin-file={sysroot}/.origin.tmp", merge)
        origin.unlink()
    if config.readonly_sysroot:
        _run(["ostree", f"--repo={repo}", "config", "set", "sysroot.readonly", "true"])
    var = dest / "ostree/deploy" / OSNAME / "var"
    for name, mode in VAR_DIRS.items():
        (var / name).mkdir(parents=True, exist_ok=True)
        (var / name).chmod(mode)


def _build(guest: Guest, final: Path) -> dict[str, object]:
    times: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=CACHE))
    tree = work / "tree"
    tools = work / "tools" if guest.composefs else None
    try:
        t = time.monotonic()
        log(f"debootstrap {guest.suite} from {MIRROR}")
        _debootstrap(guest, tree)
        times["debootstrap"] = time.monotonic() - t
        t = time.monotonic()
        log("packages in the chroot (kernel, dracut, ostree, rpm, dnf, gi, click)")
        kver = _install_packages(guest, tree)
        times["packages"] = time.monotonic() - t
        t = time.monotonic()
        _guest_files(tree)
        _base_rpmdb(tree, work)
        if tools is not None:  # a working chroot still: the layout moves /etc
            _run(["cp", "-al", tree, tools])
        fx.ostree_layout(tree)
        out = Path(str(final) + ".tmp")
        if out.exists():
            shutil.rmtree(out)
        out.mkdir()
        for config in guest.configs:  # one tree, a disk per host configuration
            sysroot = work / f"sysroot-{config}"
            log(f"commit, deploy and ext4 disk ({config})")
            _sysroot(guest, sysroot, tree, config, tools)
            shutil.copytree(sysroot / "boot", out / f"boot-{config}", symlinks=True)
            _run(["mkfs.ext4", "-q", "-L", LABEL, "-E", "root_owner=0:0", "-d", sysroot, out / f"disk-{config}.raw",
                  DISK_SIZE])
            fx.remove_sysroot(sysroot)
        shutil.rmtree(tree)
        times["commit+deploy+disks"] = time.monotonic() - t
        meta: dict[str, object] = {"guest": guest.name, "kernel": kver, "ref": REF, "osname": OSNAME,
                                   "composefs": guest.composefs, "hash": inputs_hash(),
                                   "build_seconds": {k: round(v, 1) for k, v in times.items()}}
        (out / "image.json").write_text(json.dumps(meta, indent=1) + "\n")
        os.rename(out, final)
        return meta
    finally:
        fx.remove_sysroot(work)


def image(guest: Guest = DEFAULT) -> Path:
    """The cached image folder of GUEST (disk-CONFIG.raw, boot-CONFIG/, image.json), built when missing."""
    # The default guest keeps its folder name of before there were two.
    final = CACHE / (f"image-{inputs_hash()}" if guest == DEFAULT else f"image-{guest.name}-{inputs_hash()}")
    if (final / "image.json").exists():
        return final
    missing = missing_host_tools()
    if missing:
        raise ImageError(f"cannot build the VM image: missing {', '.join(missing)} "
                         "(./dev setup installs qemu-system-x86, qemu-utils, debootstrap, e2fsprogs)")
    if os.geteuid() != 0:
        raise ImageError("building the VM image needs root (debootstrap, chroot)")
    with _locked():
        if (final / "image.json").exists():
            return final
        for old in CACHE.glob("image-*"):  # this guest's of other inputs: stale
            if old != final and _guest_of(old) == guest:
                shutil.rmtree(old, ignore_errors=True)
        for stale in CACHE.glob(".build-*"):
            fx.remove_sysroot(stale)
        t = time.monotonic()
        meta = _build(guest, final)
        log(f"built {final} in {time.monotonic() - t:.0f}s: {meta['build_seconds']}")
    return final


def _guest_of(folder: Path) -> Guest | None:
    name = folder.name.removeprefix("image-").rpartition("-")[0]
    return GUESTS.get(name or DEFAULT.name)


if __name__ == "__main__":
    print(image(GUESTS[sys.argv[1]] if len(sys.argv) > 1 else DEFAULT))
