"""Build the VM test image: a booted-ready Debian 12 OSTree host on an ext4 disk.

What it makes, cached in ``.cache/vm/image-<hash>/`` (the hash covers this file,
``debian-base.spec`` and ``guest/*``), after ../shared/design/vm-testing.md:

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

    python -m tests.vm.image          # build (or reuse) the image, print its folder
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


def _debootstrap(root: Path) -> None:
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(DEBOOTSTRAP_INCLUDE)}", SUITE, root, MIRROR])


def _install_packages(root: Path) -> str:
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
    with _chroot_mounts(root):
        _chroot(root, "apt-get", "update", "-q")
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
    shutil.copy2(root / f"boot/vmlinuz-{kver}", root / f"usr/lib/modules/{kver}/vmlinuz")
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


def _sysroot(dest: Path, tree: Path, config: HostConfig) -> None:
    dest.mkdir()
    repo = dest / "ostree/repo"
    _run(["ostree", "admin", "init-fs", dest])
    _run(["ostree", "admin", f"--sysroot={dest}", "os-init", OSNAME])
    _run(["ostree", f"--repo={repo}", "commit", f"--branch={REF}", f"--tree=dir={tree}", "--no-xattrs",
          f"--add-metadata-string=version={VERSION}", "--subject=Debian 12 OSTree host (lulayer VM tests)",
          "--fsync=false"])
    kargs = [f"--karg={k}" for k in KARGS]
    if not config.container_origin:
        fx.ostree_admin(dest, "deploy", f"--os={OSNAME}", *kargs, REF)
    else:
        base = _run(["ostree", f"--repo={repo}", "rev-parse", REF]).strip()
        merge = fx._write_image(repo, [base], version=VERSION, created=fx.IMAGE_CREATED)
        _run(["ostree", f"--repo={repo}", "refs", "--delete", REF])
        origin = dest / ".origin.tmp"
        origin.write_text(f"[origin]\ncontainer-image-reference={fx.IMAGE_REFERENCE}\n")
        fx.ostree_admin(dest, "deploy", f"--os={OSNAME}", *kargs, f"--origin-file={origin}", merge)
        origin.unlink()
    if config.readonly_sysroot:
        _run(["ostree", f"--repo={repo}", "config", "set", "sysroot.readonly", "true"])
    var = dest / "ostree/deploy" / OSNAME / "var"
    for name, mode in VAR_DIRS.items():
        (var / name).mkdir(parents=True, exist_ok=True)
        (var / name).chmod(mode)


def _build(final: Path) -> dict[str, object]:
    times: dict[str, float] = {}
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=CACHE))
    tree = work / "tree"
    try:
        t = time.monotonic()
        log(f"debootstrap {SUITE} from {MIRROR}")
        _debootstrap(tree)
        times["debootstrap"] = time.monotonic() - t
        t = time.monotonic()
        log("packages in the chroot (kernel, dracut, ostree, rpm, dnf, gi, click)")
        kver = _install_packages(tree)
        times["packages"] = time.monotonic() - t
        t = time.monotonic()
        _guest_files(tree)
        _base_rpmdb(tree, work)
        fx.ostree_layout(tree)
        out = Path(str(final) + ".tmp")
        if out.exists():
            shutil.rmtree(out)
        out.mkdir()
        for config in HostConfig:  # one tree, a disk per host configuration
            sysroot = work / f"sysroot-{config}"
            log(f"commit, deploy and ext4 disk ({config})")
            _sysroot(sysroot, tree, config)
            shutil.copytree(sysroot / "boot", out / f"boot-{config}", symlinks=True)
            _run(["mkfs.ext4", "-q", "-L", LABEL, "-E", "root_owner=0:0", "-d", sysroot, out / f"disk-{config}.raw",
                  DISK_SIZE])
            fx.remove_sysroot(sysroot)
        shutil.rmtree(tree)
        times["commit+deploy+disks"] = time.monotonic() - t
        meta: dict[str, object] = {"kernel": kver, "ref": REF, "osname": OSNAME, "hash": inputs_hash(),
                                   "build_seconds": {k: round(v, 1) for k, v in times.items()}}
        (out / "image.json").write_text(json.dumps(meta, indent=1) + "\n")
        os.rename(out, final)
        return meta
    finally:
        fx.remove_sysroot(work)


def image() -> Path:
    """The cached image folder (disk-CONFIG.raw, boot-CONFIG/, image.json), built when missing."""
    final = CACHE / f"image-{inputs_hash()}"
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
        for old in CACHE.glob("image-*"):  # other inputs: stale
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        for stale in CACHE.glob(".build-*"):
            fx.remove_sysroot(stale)
        t = time.monotonic()
        meta = _build(final)
        log(f"built {final} in {time.monotonic() - t:.0f}s: {meta['build_seconds']}")
    return final


if __name__ == "__main__":
    print(image())
