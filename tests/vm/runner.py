"""Boot the VM test image under qemu and run a shell script inside it.

``VM(workdir, config=)`` makes a qcow2 overlay of the cached image's disk for that host
configuration (image.HostConfig, TODAY by default) in workdir (so a test never changes
the image nor another test's disk) and a 9p share folder.
``vm.boot(script)`` writes the script and ``guest.sh`` to the share, boots the
disk with qemu's software emulation (KVM is not usable on these machines),
``-kernel/-initrd/-append`` taken from the disk's current default boot loader
entry, and waits for the in-image service to run ``guest.sh`` and power off.

Inside, ``guest.sh`` mounts three 9p shares: ``share`` (this boot's folder,
read-write), ``project`` (the checkout, read-only; lulayer runs from it with
the image's python3 through a symlink tree at ``/run/lulayer-vm/py``) and
``repo`` (the fixture repository, at ``/run/lulayer-vm/repo``, where the
image's ``/etc/yum.repos.d`` points). The script is sourced with a helper:

    step NAME CMD...   # runs CMD; its output goes to out/NAME.out, its exit code to out/NAME.rc

After the script, guest.sh starts the image's ``lulayer-vm-bootcopy.service``;
at shutdown, after lulayer-finalize.service has written a staged deployment,
stopping it runs ``bootcopy.sh``, which copies ``/sysroot/boot`` 's loader
entries and the kernels and initramfs they name to the share. The next
``boot()`` of the same VM boots from them: a real reboot into whatever is now
the default deployment.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.vm import image as vm_image

TOP = Path(__file__).resolve().parent.parent.parent
QEMU = ("qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", "2048",
        "-display", "none", "-monitor", "none", "-no-reboot", "-nic", "none")
BOOT_TIMEOUT = int(os.environ.get("LULAYER_VM_TIMEOUT", "900"))

GUEST_SH = r"""#!/bin/sh
# Written by tests/vm/runner.py for one boot; run by /usr/libexec/lulayer-vm-driver.
set -u
V=/run/lulayer-vm
S=$V/share
O=$S/out
rm -rf "$O"; mkdir -p "$O"
cat /proc/uptime > "$O/uptime-start"
mkdir -p $V/project $V/repo $V/py/lulayer $V/bin
for tag in project repo; do
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro $tag $V/$tag || echo "cannot mount $tag" >&2
done
for f in $V/project/lulayer/*.py $V/project/lulayer/py.typed; do ln -sf "$f" $V/py/lulayer/; done
for d in layering rpmdb apply; do ln -sfn $V/project/$d $V/py/lulayer/$d; done
printf '#!/bin/sh\nPYTHONPATH=%s/py PYTHONDONTWRITEBYTECODE=1 exec python3 -m lulayer "$@"\n' $V > $V/bin/lulayer
chmod 755 $V/bin/lulayer
export PATH=$V/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LC_ALL=C.UTF-8

step() {
    _name=$1; shift
    _t0=$(cut -d' ' -f1 /proc/uptime)
    "$@" >"$O/$_name.out" 2>&1 </dev/null
    _rc=$?
    echo "$_t0 $(cut -d' ' -f1 /proc/uptime)" >"$O/$_name.time"
    echo $_rc >"$O/$_name.rc"
    echo "### $_name: $* -> $_rc"
    cat "$O/$_name.out"
    return 0
}

(cd / && . $S/test.sh) >"$O/output.txt" 2>&1 </dev/null
echo $? >"$O/rc"
cat /proc/uptime > "$O/uptime-end"
systemctl start lulayer-vm-bootcopy.service  # copies /boot out at shutdown (bootcopy.sh)
sync
"""

# Run at shutdown by lulayer-vm-bootcopy.service's ExecStop=, after lulayer's own
# shutdown hook: the boot configuration for the next boot, as the boot loader reads it.
BOOTCOPY_SH = r"""#!/bin/sh
O=/run/lulayer-vm/share/out
mkdir -p "$O/boot/loader/entries"
cp /sysroot/boot/loader/entries/*.conf "$O/boot/loader/entries/"
for p in $(sed -n 's/^\(linux\|initrd\)[ \t]*//p' /sysroot/boot/loader/entries/*.conf | sort -u); do
    mkdir -p "$O/boot$(dirname "$p")"
    cp "/sysroot/boot$p" "$O/boot$p"
done
sync
"""


class VMError(AssertionError):
    """The VM could not be booted or did not finish its script (an assertion: the test fails)."""


@dataclass
class BootEntry:
    linux: str
    initrd: str
    options: str
    version: int
    title: str


def read_entries(boot_dir: Path) -> list[BootEntry]:
    """The boot loader entries of a /boot copy, the default (highest version) first."""
    out = []
    for conf in sorted((boot_dir / "loader/entries").glob("*.conf")):
        kv: dict[str, str] = {}
        for line in conf.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, value = line.strip().partition(" ")
                kv[key] = value.strip()
        out.append(BootEntry(kv["linux"], kv["initrd"], kv["options"], int(kv.get("version", "0")),
                             kv.get("title", "")))
    if not out:
        raise VMError(f"no boot loader entries in {boot_dir}/loader/entries")
    return sorted(out, key=lambda e: -e.version)


@dataclass
class Boot:
    """What one boot left: the script's exit code and output, each step's, the serial log."""

    number: int
    rc: int | None
    output: str
    serial: str
    seconds: float
    guest_seconds: float | None  # the guest's uptime when the script ended
    guest_start: float | None = None  # the guest's uptime when the script started: the boot time
    steps: dict[str, tuple[int, str]] = field(default_factory=dict)
    step_seconds: dict[str, float] = field(default_factory=dict)
    entry: BootEntry | None = None

    def step(self, name: str) -> tuple[int, str]:
        if name not in self.steps:
            raise AssertionError(f"boot {self.number}: step {name!r} did not run\n{self.describe()}")
        return self.steps[name]

    def ok(self, name: str) -> str:
        """The output of step NAME, which must have exited 0."""
        rc, out = self.step(name)
        assert rc == 0, f"boot {self.number}: step {name} exited {rc}:\n{out}\n--- whole output\n{self.output}"
        return out

    def failed(self, name: str) -> str:
        rc, out = self.step(name)
        assert rc != 0, f"boot {self.number}: step {name} succeeded but should have failed:\n{out}"
        return out

    def describe(self) -> str:
        return (f"--- boot {self.number}: rc={self.rc}, {self.seconds:.0f}s\n--- output\n{self.output}\n"
                f"--- serial (tail)\n{self.serial[-6000:]}")


class VM:
    """One test's machine: a qcow2 overlay of the image's disk, booted as often as the test likes."""

    def __init__(self, workdir: Path, *, config: vm_image.HostConfig = vm_image.HostConfig.TODAY,
                 image_dir: Path | None = None, repo: Path | None = None) -> None:
        missing = vm_image.missing_host_tools()
        if missing:
            raise VMError(f"cannot run VM tests: missing {', '.join(missing)} (./dev setup installs them)")
        self.image = image_dir or vm_image.image()
        self.config = config
        self.dir = Path(workdir).absolute()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.disk = self.dir / "disk.qcow2"
        self.share = self.dir / "share"
        self.share.mkdir(exist_ok=True)
        if repo is None:
            from fixtures import build as fx

            repo = fx.fixture_repo()
        self.repo = repo
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                        str(self.image / f"disk-{config}.raw"), str(self.disk)], check=True)
        self.boot_dir = self.image / f"boot-{config}"
        self.boots: list[Boot] = []

    def boot(self, script: str, *, timeout: int = BOOT_TIMEOUT) -> Boot:
        n = len(self.boots) + 1
        (self.share / "guest.sh").write_text(GUEST_SH)
        (self.share / "bootcopy.sh").write_text(BOOTCOPY_SH)
        (self.share / "test.sh").write_text(script)
        shutil.rmtree(self.share / "out", ignore_errors=True)
        entry = read_entries(self.boot_dir)[0]
        serial = self.dir / f"serial-{n}.log"
        cmd = [*QEMU, "-serial", f"file:{serial}",
               "-kernel", str(self.boot_dir / entry.linux.lstrip("/")),
               "-initrd", str(self.boot_dir / entry.initrd.lstrip("/")),
               "-append", entry.options,
               "-drive", f"file={self.disk},if=virtio,format=qcow2,cache=unsafe",
               "-virtfs", f"local,path={self.share},mount_tag=share,security_model=none,id=share",
               "-virtfs", f"local,path={TOP},mount_tag=project,security_model=none,id=project,readonly=on",
               "-virtfs", f"local,path={self.repo},mount_tag=repo,security_model=none,id=repo,readonly=on"]
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            qemu_out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            qemu_out, _ = proc.communicate()
            timed_out = True
        else:
            timed_out = False
        seconds = time.monotonic() - start
        out_dir = self.share / "out"
        result = Boot(number=n, rc=_read_int(out_dir / "rc"), output=_read(out_dir / "output.txt"),
                      serial=_read(serial), seconds=seconds, guest_seconds=_uptime(out_dir / "uptime-end"),
                      entry=entry, guest_start=_uptime(out_dir / "uptime-start"))
        for rc_file in sorted(out_dir.glob("*.rc")) if out_dir.is_dir() else []:
            rc = _read_int(rc_file)
            result.steps[rc_file.stem] = (-1 if rc is None else rc, _read(rc_file.with_suffix(".out")))
            times = _read(rc_file.with_suffix(".time")).split()
            if len(times) == 2:
                result.step_seconds[rc_file.stem] = float(times[1]) - float(times[0])
        self.boots.append(result)
        steps = ", ".join(f"{k} {v:.1f}s" for k, v in result.step_seconds.items())
        print(f"[vm] boot {n}: {seconds:.1f}s in qemu; script started at guest uptime {result.guest_start}s, "
              f"ended at {result.guest_seconds}s; steps: {steps}", file=sys.stderr, flush=True)
        if timed_out:
            raise VMError(f"boot {n} did not power off within {timeout}s\n{result.describe()}")
        if proc.returncode != 0:
            raise VMError(f"qemu exited {proc.returncode}: {qemu_out.decode(errors='replace')}\n{result.describe()}")
        if result.rc is None:
            raise VMError(f"boot {n}: the script did not finish (no out/rc); guest.sh said:\n"
                          f"{_read(self.share / 'guest.log')}\n{result.describe()}")
        if (out_dir / "boot/loader/entries").is_dir():
            # Keep this boot's /boot copy for the next boot.
            keep = self.dir / f"boot-after-{n}"
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(out_dir / "boot", keep)
            self.boot_dir = keep
        return result

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _read(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _read_int(p: Path) -> int | None:
    text = _read(p).strip()
    return int(text) if re.fullmatch(r"-?\d+", text) else None


def _uptime(p: Path) -> float | None:
    text = _read(p).split()
    return float(text[0]) if text else None
