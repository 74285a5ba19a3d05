"""lulayer's benchmark: install --live, apply-live and compose against dnf and ostree.

Run it as ``./dev bench [--sizes 1000,10000,100000] [--packages htop,bigpkg] [--runs N]
[--json FILE]``. For each package (htop: a small one; bigpkg: 2,001 files, see
fixtures/specs/bigpkg.spec), each size (files added to the base image, see
fixtures.build.sysroot_template) and each run, on fresh clones of the template sysroot
(cloning and copying are set-up, never timed), it measures side by side:

* ``install_live_s``: ``lulayer install PKG --live``, end to end (subprocess wall time):
  when it returns the package is live and the next boot's deployment is staged;
* ``usable_s``: from the same start until the package's program first runs from the live
  /usr, seen from outside: a thread of the benchmark polls for ``usr/bin/PKG`` in the
  booted deployment every 5 ms and, once it is there, runs it; the first run that exits 0
  ends the clock (bigpkg exits 0 only once all its 2,000 data files are there);
* ``dnf_usable_s``: the same poller on the dnf baseline's tree (below);
* ``cpu_s``, ``dnf_cpu_s``: the user + system CPU time of ``install --live`` and of the
  dnf baseline (wait4's rusage: the process and the children it waited for, so not the
  detached writer): on a machine shared with other work, wall times follow the load
  while CPU times barely do;
* ``written_s``: from the same start until the detached child that writes the staged
  deployment (layering/staged.py) has released the sysroot lock: the next boot is ready;
* ``apply_live_s``: ``lulayer apply-live`` alone, after an untimed ``lulayer install htop``;
* ``install_s``: ``lulayer install htop`` (compose and deploy, no --live) alone — it is
  that same install, on the same clone;
* ``peak_rss_mb``: the peak RSS of the end-to-end run (wait4's ru_maxrss: the lulayer
  process, or the largest of the children it waited for), in MiB;
* ``dnf_s``: baseline 1, python3-dnf (the system interpreter) installing the same
  package set (htop: htop and ncurses-libs) into a plain ``cp -a`` copy of the booted
  deployment (installroot);
* ``ostree_union_add_s``: baseline 2, ``ostree checkout --union-add`` of the target
  commit (the pending deployment's) onto another copy of the booted deployment, which
  is what rpm-ostree's apply-live does;
* ``import_floor_s``: the interpreter lulayer runs on importing click, rpm, dnf and
  libostree's gi bindings, and nothing else: what any Python tool on these bindings
  pays before its first step (it bounds how close to the dnf baseline lulayer can get);
* ``rpm_copy_s``, ``rpm_overlay_s``: rpm(8) alone installing the RPMs of dnf's set (the
  files in the repository), with its digest and signature checks off as lulayer's
  transaction has them, into another plain copy of the booted deployment, and into an
  overlay mounted with the options of lulayer's compose whose lower layer is the
  template's booted deployment (a checkout, as the compose's base is). Their difference
  is what rpm's writes pay for the overlay that keeps the repository's hardlinks safe;
  ``import_floor_s + rpm_overlay_s`` is about the least a tool pays until usable that
  imports these bindings and then runs rpm on such an overlay, before it resolves
  anything or makes the files live (the ratio ``usable_floor_vs_dnf_usable``).

lulayer runs installed, as a host has it: the checkout is built into a wheel and installed,
byte-compiled, into a venv of the benchmark's own (Debian's interpreter with its system
packages, click from the checkout's venv). Run from the checkout, every command would pay for
the editable install's import finder (9 ms of htop's install --live here), and, with
PYTHONDONTWRITEBYTECODE set, for compiling lulayer's modules again (0.1-0.5 s), while dnf's
modules were compiled when Debian installed them.

The repository cache is warm: one untimed install on a throwaway clone per size fills
its var/cache/lulayer, which is copied into each fresh clone before the timed command
(the dnf baseline gets its own cache directory, warmed the same way). Everything is
flushed (sync) after set-up, before each timed command. No timed command starts within
SETTLE_S (vm.dirty_expire_centisecs + 1 s) of removing a tree: ext4 makes the file
creations that follow a large removal pay for it (see SETTLE_S), so a size's trees are all
removed after its timed runs.

The numbers are reported, with the issue's targets and whether each was met; a missed
target never fails the run. The whole benchmark runs in a private mount namespace (it
re-executes itself under ``unshare --mount --propagation private``), so the live
overlays never reach the host.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

TOP = Path(__file__).resolve().parent.parent
if str(TOP) not in sys.path:
    sys.path.insert(0, str(TOP))

from fixtures import build as fb  # noqa: E402  (needs TOP on sys.path)
from lulayer.mounts import mount_overlay  # noqa: E402

NAMESPACE_ENV = "LULAYER_BENCH_NAMESPACE"
TEST_NAMESPACE_ENV = "LULAYER_TEST_NAMESPACE"  # the test suite's private namespace (tests/conftest.py)
DEFAULT_SIZES = (1000, 10000, 100000)
DEFAULT_RUNS = 3
DEFAULT_PACKAGES = ("htop", "bigpkg")
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's python3-dnf is built for it
IMPORT_FLOOR = "import click, dnf, rpm, gi; gi.require_version('OSTree', '1.0'); from gi.repository import OSTree"

# Every measurement of a run, in table order: key, column heading, unit.
MEASURES: tuple[tuple[str, str, str], ...] = (
    ("install_live_s", "install --live", "s"),
    ("usable_s", "usable", "s"),
    ("written_s", "next boot written", "s"),
    ("apply_live_s", "apply-live", "s"),
    ("install_s", "install (no --live)", "s"),
    ("dnf_s", "dnf baseline", "s"),
    ("dnf_usable_s", "dnf usable", "s"),
    ("cpu_s", "install --live CPU", "s"),
    ("dnf_cpu_s", "dnf CPU", "s"),
    ("ostree_union_add_s", "ostree union-add", "s"),
    ("import_floor_s", "import floor", "s"),
    ("rpm_copy_s", "rpm into a copy", "s"),
    ("rpm_overlay_s", "rpm into an overlay", "s"),
    ("peak_rss_mb", "peak RSS e2e", "MiB"),
)
MEASURED_KEYS: tuple[str, ...] = tuple(k for k, _, _ in MEASURES)
# Also recorded per run (JSON only): the peak RSS of the two phase commands and of the
# detached writer of the e2e run (its VmHWM, which it logs in run/lulayer/finalize.log).
EXTRA_KEYS: tuple[str, ...] = ("install_rss_mb", "apply_live_rss_mb", "writer_rss_mb")
RATIO_KEYS: tuple[str, ...] = ("install_live_vs_dnf", "usable_vs_dnf_usable", "cpu_vs_dnf_cpu", "written_vs_dnf",
                                "import_floor_vs_dnf", "apply_live_vs_ostree_union_add", "rpm_overlay_vs_copy",
                                "usable_floor_vs_dnf_usable")

CACHE_METHOD = (
    "warm: var/cache/lulayer of an untimed warm-up `install PKG --live` on a throwaway clone "
    "(one per package and size) is copied into each fresh clone before timing; the dnf baseline uses its own "
    "cache directory, warmed by one untimed dnf run per size"
)
TARGET_LIVE_SCALING = 1.5
TARGET_RSS_MB = 150.0
TARGET_RSS_SIZE = 100000
SMALL_PACKAGE = "htop"  # judged by the small-package target; every other package by the large one
TARGET_USABLE_VS_DNF = 1.3  # the large package: time to usable against dnf's, at every size
TARGET_SMALL_GAP_S = 0.1  # the small package: install --live at most this much over dnf
POLL_S = 0.005

# Baseline 1: dnf (python3-dnf) into a plain copy of the live tree. Its persistdir and
# logdir go inside the copy, as the dnf command puts them under --installroot; left
# at their defaults, they would be the host's /var/lib/dnf and /var/log.
DNF_SCRIPT = r"""
import os, sys
import dnf, rpm
root, baseurl, cachedir, pkg = sys.argv[1:5]
base = dnf.Base()
conf = base.conf
conf.installroot = root
conf.cachedir = cachedir
conf.persistdir = os.path.join(root, "var/lib/dnf")
conf.logdir = os.path.join(root, "var/log")
for d in (conf.persistdir, conf.logdir):
    os.makedirs(d, exist_ok=True)
conf.reposdir = []
conf.substitutions["releasever"] = "41"
conf.assumeyes = True
conf.install_weak_deps = False
conf.gpgcheck = False
base.repos.add_new_repo("lulayer-fixtures", conf, baseurl=[baseurl])
# dnf.Base() reloads rpm's configuration: point %_dbpath at the tree's only now.
rpm.addMacro("_dbpath", "/usr/share/rpm")
base.fill_sack(load_system_repo=True, load_available_repos=True)
base.install(pkg)
base.resolve()
pkgs = list(base.transaction.install_set)
base.download_packages(pkgs)
base.do_transaction()
print(" ".join(sorted(str(p) for p in pkgs)))
"""


class BenchError(RuntimeError):
    """A benchmarked or set-up command failed (the message carries its output)."""


# --------------------------------------------------------------------------- the namespace


def in_private_namespace() -> bool:
    return bool(os.environ.get(NAMESPACE_ENV) or os.environ.get(TEST_NAMESPACE_ENV))


def reexec_in_private_namespace(argv: Sequence[str]) -> None:
    """Re-execute this module under `unshare --mount --propagation private` (once)."""
    if in_private_namespace():
        return
    if os.geteuid() != 0:
        sys.exit("error: the benchmark needs root (it mounts overlays and builds OSTree sysroots)")
    unshare = shutil.which("unshare")
    if unshare is None:
        sys.exit("error: unshare(1) (util-linux) is needed for a private mount namespace")
    env = dict(os.environ, **{NAMESPACE_ENV: "1"})
    cmd = [unshare, "--mount", "--propagation", "private", sys.executable, "-m", "tests.bench", *argv]
    os.chdir(TOP)
    os.execve(unshare, cmd, env)


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Timed:
    seconds: float
    maxrss_kib: int
    stdout: str
    stderr: str
    usable_s: float | None = None  # when the polled program first ran (see Poller)
    cpu_s: float = 0.0  # user + system CPU time of the command and the children it waited for


def _env() -> dict[str, str]:
    return dict(os.environ, LC_ALL="C", LANG="C")


def _describe(cmd: Sequence[str], code: int, out: str, err: str) -> str:
    return f"$ {' '.join(cmd)}\nexit {code}\n--- stdout\n{out}--- stderr\n{err}"


class Poller:
    """From outside the timed command: the first moment PROGRAM runs and exits 0.

    A thread looks for the file every POLL_S and, once it is there, runs it (the
    command's own process is never touched); the clock stops when a run succeeds.
    """

    def __init__(self, program: Path) -> None:
        self.program = program
        self.start = 0.0
        self.found: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def begin(self, start: float) -> None:
        self.start = start
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            if os.path.lexists(self.program):
                try:
                    ok = subprocess.run([self.program], stdin=subprocess.DEVNULL, capture_output=True,
                                        check=False).returncode == 0
                except OSError:  # not yet executable, or replaced under us
                    ok = False
                if ok:
                    self.found = time.perf_counter() - self.start
                    return
            self._stop.wait(POLL_S)

    def end(self, wait_s: float) -> float | None:
        """When the program first ran, polling on for at most wait_s more; None if it never did."""
        self._thread.join(wait_s)
        self._stop.set()
        self._thread.join()
        return self.found


def timed(cmd: Sequence[str | os.PathLike[str]], poll: Path | None = None) -> Timed:
    """Run CMD; its wall time and wait4's ru_maxrss, and with POLL the time until the
    program POLL first runs (Poller). A failure raises BenchError."""
    args = [os.fspath(c) for c in cmd]
    poller = Poller(poll) if poll is not None else None
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=_env(), cwd="/")
        if poller is not None:
            poller.begin(start)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        # The command has returned: its package is usable by now, or the poller sees it soon.
        usable = poller.end(10.0) if poller is not None and proc.returncode == 0 else None
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise BenchError(_describe(args, proc.returncode, stdout, stderr))
    return Timed(seconds, int(usage.ru_maxrss), stdout, stderr, usable, usage.ru_utime + usage.ru_stime)


def run(cmd: Sequence[str | os.PathLike[str]]) -> str:
    """Run a set-up command (untimed); its stdout. A failure raises BenchError."""
    args = [os.fspath(c) for c in cmd]
    proc = subprocess.run(args, capture_output=True, text=True, env=_env(), cwd="/", check=False)
    if proc.returncode != 0:
        raise BenchError(_describe(args, proc.returncode, proc.stdout, proc.stderr))
    return proc.stdout


T = TypeVar("T")


def _retrying(what: str, make: Callable[[], T], attempts: int = 3) -> T:
    # The fixture cache is shared: another process that builds the fixtures of changed
    # inputs prunes the old ones, possibly while we copy them. Get them again then.
    for attempt in range(1, attempts + 1):
        try:
            return make()
        except (fb.FixtureError, OSError, shutil.Error) as e:
            if attempt == attempts:
                raise
            print(f"  ({what} failed, retrying: {str(e).splitlines()[0]})", file=sys.stderr)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- set-up


def _cp_a(src: Path, dest: Path) -> None:
    run(["cp", "-a", "--no-target-directory", src, dest])


# ext4 skips, when it allocates an inode, every inode freed less than vm.dirty_expire_centisecs ago (fs/ext4/
# ialloc.c recently_deleted), and checking each costs a buffer-cache lookup. Measured here: rpm installing bigpkg's
# 2,001 files into a plain tree took 1.4-1.7 s (openat: 409 us per call on average) right after removing copies
# of that tree, and 0.43 s after 31 s without a removal. A timed command that follows a removal of many files
# within that window pays for it, and which of lulayer and dnf followed one decided their ratio. So the trees
# of a size are removed only after its timed runs, and no timed command starts within SETTLE_S of a removal.
def _settle_s() -> float:
    try:
        return int(Path("/proc/sys/vm/dirty_expire_centisecs").read_text()) / 100 + 1
    except (OSError, ValueError):
        return 31.0


SETTLE_S = _settle_s()
_last_removal = 0.0


def _remove(path: Path) -> None:
    global _last_removal
    if path.exists() or path.is_symlink():
        fb.remove_sysroot(path)  # unmounts, clears immutable attributes, removes (files too)
        _last_removal = time.monotonic()


def settle() -> float:
    """Wait until SETTLE_S have passed since the last removal; returns the seconds waited."""
    wait = max(0.0, _last_removal + SETTLE_S - time.monotonic())
    time.sleep(wait)
    return wait


def _cache_dir(sysroot: Path) -> Path:
    return sysroot / "ostree" / "deploy" / fb.OSNAME / "var" / "cache" / "lulayer"


def _pending_commit(sysroot: Path) -> str:
    """The checksum of the default (first) deployment: the pending one after an install."""
    return fb.deployments(sysroot)[0].name.split(".")[0]


def _sync() -> None:
    os.sync()


@dataclass
class Workdir:
    root: Path
    repo: Path
    python: Path  # the interpreter of the venv lulayer is installed in (install_lulayer)

    def lulayer(self, sysroot: Path, *args: str) -> list[str]:
        return [str(self.python), "-m", "lulayer", "--sysroot", str(sysroot), *args]

    def snapshot(self, size: int) -> Path:
        """A private copy of the template sysroot of SIZE, its repo file pointing at our repo."""
        dest = self.root / f"template-{size}"

        def make() -> Path:
            _remove(dest)
            fb.clone_sysroot(fb.sysroot_template(size), dest)
            return dest

        _retrying(f"copying the {size}-file template", make)
        repo_file = fb.booted_deployment(dest) / fb.REPO_FILE
        text = "\n".join(
            f"baseurl=file://{self.repo}" if line.startswith("baseurl=") else line
            for line in repo_file.read_text().splitlines()
        )
        repo_file.write_text(text + "\n")
        return dest


PACKAGE_DIRS = ("lulayer", "apply", "layering", "rpmdb")  # pyproject.toml's package-dir


def install_lulayer(root: Path) -> Path:
    """Install the checkout into a venv under root, as a host has lulayer (see the docstring);
    returns the venv's interpreter. Built from a copy, so no build/ lands in the checkout."""
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(TOP / name, src / name)
    for d in PACKAGE_DIRS:
        shutil.copytree(TOP / d, src / d, ignore=shutil.ignore_patterns("__pycache__"))
    venv = root / "venv"
    run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", "--system-site-packages", venv])
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    # lulayer's dependency (click) as the checkout's venv has it: a path entry after the venv's own.
    (site / "lulayer-bench-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", site, src])
    shutil.rmtree(src)
    return python


def make_workdir(parent: Path | None) -> Workdir:
    root = Path(tempfile.mkdtemp(prefix="lulayer-bench-", dir=parent)).absolute()
    repo = root / "repo"

    def make() -> Path:
        shutil.rmtree(repo, ignore_errors=True)
        shutil.copytree(fb.fixture_repo(), repo, symlinks=True)
        return repo

    _retrying("copying the fixture repository", make)
    return Workdir(root, repo, install_lulayer(root))


# --------------------------------------------------------------------------- one size


def _program(tree: Path, package: str) -> Path:
    return tree / "usr" / "bin" / package


def _check_installed(tree: Path, package: str, what: str) -> None:
    if not _program(tree, package).exists():
        raise BenchError(f"{what}: {_program(tree, package)} is missing after the install")


def _mib(kib: int) -> float:
    return kib / 1024


class SizeBench:
    """The runs of one package at one size; template is work.snapshot(size)."""

    def __init__(self, work: Workdir, size: int, template: Path, package: str) -> None:
        self.work = work
        self.size = size
        self.package = package
        self.template = template
        self.cache = work.root / f"cache-{package}-{size}"
        self.dnf_cache = work.root / f"dnf-cache-{package}-{size}"
        self.trash: list[Path] = []  # removed by clear(), after the timed runs (see SETTLE_S)

    def _new(self, name: str) -> Path:
        dest = self.work.root / f"{self.package}-{self.size}-{len(self.trash)}-{name}"
        self.trash.append(dest)
        return dest

    def clear(self) -> None:
        while self.trash:
            _remove(self.trash.pop())

    def clone(self, name: str) -> Path:
        dest = self._new(name)
        fb.clone_sysroot(self.template, dest)
        return dest

    def copy_live_tree(self, sysroot: Path, name: str) -> Path:
        dest = self._new(name)
        _cp_a(fb.booted_deployment(sysroot), dest)
        fb._set_immutable(dest, False)  # a plain tree, as the booted deployment's copy is
        return dest

    def give_cache(self, sysroot: Path) -> None:
        dest = _cache_dir(sysroot)
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        _cp_a(self.cache, dest)

    def dnf(self, tree: Path, poll: bool = False) -> Timed:
        return timed([SYSTEM_PYTHON, "-c", DNF_SCRIPT, tree, f"file://{self.work.repo}", self.dnf_cache,
                      self.package], _program(tree, self.package) if poll else None)

    def overlay_of_template(self, name: str) -> Path:
        """An overlay on the template's booted deployment, mounted as the compose mounts its own
        (layering/compose.py), in a new folder; returns where it is mounted."""
        top = self._new(name)
        layers = {k: top / k for k in ("upper", "work", "merged")}
        for d in layers.values():
            d.mkdir(parents=True)
        mount_overlay(layers["merged"], fb.booted_deployment(self.template), layers["upper"], layers["work"],
                      redirect_dir=False)
        return layers["merged"]

    def rpms_of(self, dnf_out: str) -> list[Path]:
        """The repository's RPM files of the set the dnf baseline printed (its NEVRAs)."""
        rpms = [self.work.repo / f"{nevra}.rpm" for nevra in dnf_out.split()]
        missing = [p.name for p in rpms if not p.is_file()]
        if not rpms or missing:
            raise BenchError(f"the dnf baseline's packages are not files of {self.work.repo}: {missing or dnf_out!r}")
        return rpms

    def rpm(self, tree: Path, rpms: Sequence[Path]) -> Timed:
        """rpm(8) installing rpms into tree, its rpmdb where the dnf baseline has it."""
        result = timed(["rpm", "--root", tree, "--dbpath", "/usr/share/rpm", "--nosignature", "--nodigest",
                        "-i", *rpms])
        _check_installed(tree, self.package, "rpm -i")
        return result

    def warm_up(self) -> None:
        """Untimed: fill the lulayer and dnf caches of this size (and the page cache)."""
        sysroot = self.clone("warmup")
        timed(self.work.lulayer(sysroot, "install", self.package, "--live"))
        shutil.rmtree(self.cache, ignore_errors=True)
        _cp_a(_cache_dir(sysroot), self.cache)
        fb.wait_unlocked(sysroot)
        self.dnf(self.copy_live_tree(self.template, "warmup-dnf"))

    def one_run(self) -> dict[str, float]:
        # End to end: install --live on a fresh clone with the warm cache.
        a = self.clone("run-e2e")
        self.give_cache(a)
        _sync()
        live = fb.booted_deployment(a)
        e2e = timed(self.work.lulayer(a, "install", self.package, "--live"), _program(live, self.package))
        _check_installed(live, self.package, "install --live")
        if e2e.usable_s is None:
            raise BenchError(f"install --live: {_program(live, self.package)} never ran")
        t0 = time.perf_counter()
        fb.wait_unlocked(a)
        written = e2e.seconds + time.perf_counter() - t0
        writer_rss_kib = _writer_rss_kib(a)
        _check_installed(fb.deployments(a)[0], self.package, "the staged deployment")

        # The phases: install (compose + deploy), then apply-live, on another clone;
        # the baselines on copies of its live tree, made before anything is live.
        b = self.clone("run-phases")
        self.give_cache(b)
        _sync()
        install = timed(self.work.lulayer(b, "install", self.package))
        target = _pending_commit(b)
        dnf_tree = self.copy_live_tree(b, "run-dnf")
        ostree_tree = self.copy_live_tree(b, "run-ostree")
        rpm_tree = self.copy_live_tree(b, "run-rpm")
        overlay = self.overlay_of_template("run-rpm-overlay")
        _sync()
        apply = timed(self.work.lulayer(b, "apply-live"))
        _check_installed(fb.booted_deployment(b), self.package, "apply-live")

        _sync()
        dnf = self.dnf(dnf_tree, poll=True)
        _check_installed(dnf_tree, self.package, "dnf baseline")
        if dnf.usable_s is None:
            raise BenchError(f"dnf baseline: {_program(dnf_tree, self.package)} never ran")

        rpms = self.rpms_of(dnf.stdout)
        _sync()
        rpm_copy = self.rpm(rpm_tree, rpms)
        _sync()
        try:
            rpm_overlay = self.rpm(overlay, rpms)
        finally:
            run(["umount", overlay])

        _sync()
        union = timed(["ostree", f"--repo={b / 'ostree' / 'repo'}", "checkout", "--union-add", target,
                       ostree_tree])
        _check_installed(ostree_tree, self.package, "ostree checkout --union-add")

        floor = timed([self.work.python, "-c", IMPORT_FLOOR])
        return {
            "install_live_s": e2e.seconds,
            "usable_s": e2e.usable_s,
            "dnf_usable_s": dnf.usable_s,
            "cpu_s": e2e.cpu_s,
            "dnf_cpu_s": dnf.cpu_s,
            "written_s": written,
            "import_floor_s": floor.seconds,
            "rpm_copy_s": rpm_copy.seconds,
            "rpm_overlay_s": rpm_overlay.seconds,
            "apply_live_s": apply.seconds,
            "install_s": install.seconds,
            "dnf_s": dnf.seconds,
            "ostree_union_add_s": union.seconds,
            "peak_rss_mb": _mib(e2e.maxrss_kib),
            "install_rss_mb": _mib(install.maxrss_kib),
            "apply_live_rss_mb": _mib(apply.maxrss_kib),
            "writer_rss_mb": _mib(writer_rss_kib),
        }


def _writer_rss_kib(sysroot: Path) -> int:
    """The detached writer's peak RSS, from the line it logs last (`peak RSS N kB`)."""
    log = sysroot / "run" / "lulayer" / "finalize.log"
    for line in reversed(log.read_text().splitlines()):
        if line.startswith("peak RSS "):
            return int(line.split()[2])
    raise BenchError(f"{log} names no peak RSS:\n{log.read_text()}")


# --------------------------------------------------------------------------- report


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf")


Results = Mapping[str, Mapping[int, list[dict[str, float]]]]  # package -> size -> runs


def summarize(results: Results) -> dict[str, Any]:
    """Per package and size: the runs, their medians, the ratios and each median against
    the smallest size's."""
    out: dict[str, Any] = {}
    for package, by_size in results.items():
        sizes = sorted(by_size)
        medians = {s: {k: statistics.median(r[k] for r in by_size[s]) for k in (*MEASURED_KEYS, *EXTRA_KEYS)}
                   for s in sizes}
        smallest = sizes[0]
        out[package] = {}
        for s in sizes:
            m = medians[s]
            out[package][str(s)] = {
                "runs": by_size[s],
                "median": m,
                "ratios": {
                    "install_live_vs_dnf": _ratio(m["install_live_s"], m["dnf_s"]),
                    "usable_vs_dnf_usable": _ratio(m["usable_s"], m["dnf_usable_s"]),
                    "cpu_vs_dnf_cpu": _ratio(m["cpu_s"], m["dnf_cpu_s"]),
                    "written_vs_dnf": _ratio(m["written_s"], m["dnf_s"]),
                    "import_floor_vs_dnf": _ratio(m["import_floor_s"], m["dnf_s"]),
                    "apply_live_vs_ostree_union_add": _ratio(m["apply_live_s"], m["ostree_union_add_s"]),
                    "rpm_overlay_vs_copy": _ratio(m["rpm_overlay_s"], m["rpm_copy_s"]),
                    "usable_floor_vs_dnf_usable": _ratio(m["import_floor_s"] + m["rpm_overlay_s"],
                                                         m["dnf_usable_s"]),
                },
                "vs_smallest": {k: _ratio(m[k], medians[smallest][k]) for k in MEASURED_KEYS},
            }
    return out


def _package_targets(package: str, summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    sizes = sorted(int(s) for s in summary)
    med = {s: summary[str(s)]["median"] for s in sizes}
    small, large = sizes[0], sizes[-1]
    scaling = _ratio(med[large]["apply_live_s"], med[small]["apply_live_s"])
    out: list[dict[str, Any]] = [{
        "target": f"{package}: apply-live at the largest size <= {TARGET_LIVE_SCALING}x the smallest",
        "met": scaling <= TARGET_LIVE_SCALING if len(sizes) > 1 else None,
        "detail": f"apply-live {med[large]['apply_live_s']:.3f}s at {large} / "
                  f"{med[small]['apply_live_s']:.3f}s at {small} = {scaling:.2f}x"
                  + ("" if len(sizes) > 1 else " (one size only: not evaluated)"),
    }]
    if package == SMALL_PACKAGE:
        gap = {s: med[s]["install_live_s"] - med[s]["dnf_s"] for s in sizes}
        # Each run against the dnf run beside it: on a shared machine, what the load does to both cancels.
        paired = {s: [r["install_live_s"] - r["dnf_s"] for r in summary[str(s)]["runs"]] for s in sizes}
        out.append({
            "target": f"{package}: install --live at most {TARGET_SMALL_GAP_S:.1f}s over dnf at every size",
            "met": all(g <= TARGET_SMALL_GAP_S for g in gap.values()),
            "detail": "; ".join(
                f"{s}: {med[s]['install_live_s']:.3f}s vs dnf {med[s]['dnf_s']:.3f}s ({gap[s]:+.3f}s; each run "
                f"against the dnf run beside it: median {statistics.median(paired[s]):+.3f}s, "
                f"{min(paired[s]):+.3f}s to {max(paired[s]):+.3f}s; import floor {med[s]['import_floor_s']:.3f}s)"
                for s in sizes),
        })
    else:
        ratio = {s: _ratio(med[s]["usable_s"], med[s]["dnf_usable_s"]) for s in sizes}
        out.append({
            "target": f"{package}: usable within {TARGET_USABLE_VS_DNF}x dnf's time to usable at every size",
            "met": all(r <= TARGET_USABLE_VS_DNF for r in ratio.values()),
            "detail": "; ".join(
                f"{s}: usable at {med[s]['usable_s']:.3f}s vs dnf {med[s]['dnf_usable_s']:.3f}s "
                f"({ratio[s]:.2f}x; install --live returns at {med[s]['install_live_s']:.3f}s; import floor + rpm "
                f"into an overlay {med[s]['import_floor_s'] + med[s]['rpm_overlay_s']:.3f}s, "
                f"{summary[str(s)]['ratios']['usable_floor_vs_dnf_usable']:.2f}x)" for s in sizes),
        })
    return out


def targets(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = [t for package in summary for t in _package_targets(package, summary[package])]
    at = [(p, summary[p][str(TARGET_RSS_SIZE)]["median"]) for p in summary if str(TARGET_RSS_SIZE) in summary[p]]
    if at:
        rss = max(max(m["peak_rss_mb"], m["writer_rss_mb"]) for _, m in at)
        out.append({"target": f"peak RSS <= {TARGET_RSS_MB:.0f} MB at {TARGET_RSS_SIZE}",
                    "met": rss <= TARGET_RSS_MB,
                    "detail": f"{rss:.1f} MiB (median peak RSS at {TARGET_RSS_SIZE}: "
                              + "; ".join(f"{p}: install --live {m['peak_rss_mb']:.1f}, its detached writer "
                                          f"{m['writer_rss_mb']:.1f}" for p, m in at) + ")"})
    else:
        out.append({"target": f"peak RSS <= {TARGET_RSS_MB:.0f} MB at {TARGET_RSS_SIZE}", "met": None,
                    "detail": f"size {TARGET_RSS_SIZE} not measured; largest peak RSS measured: "
                              f"{max(r['median']['peak_rss_mb'] for p in summary.values() for r in p.values()):.1f}"
                              " MiB"})
    return out


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
                break
    except OSError:
        pass
    return {
        "kernel": os.uname().release,
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model or platform.processor() or "unknown",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()),
    }


def _fmt(key: str, value: float) -> str:
    return f"{value:.1f}" if key.endswith("_mb") else f"{value:.3f}"


def format_report(report: Mapping[str, Any]) -> str:
    summary = report["results"]
    m = report["machine"]
    lines = [
        f"lulayer benchmark: {m['date']}, kernel {m['kernel']}, {m['nproc']} CPUs ({m['cpu_model']}), "
        f"load {m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end",
        f"medians of {report['config']['runs']} runs per package and size, the packages' runs interleaved; "
        "times in seconds (subprocess wall time), "
        "RSS in MiB",
        f"repository cache: {report['config']['cache']}",
        "",
    ]
    heads = ["files", *(h for _, h, _ in MEASURES), "lulayer/dnf", "usable/dnf usable", "CPU/dnf CPU", "written/dnf",
             "floor/dnf", "apply/union-add", "rpm overlay/copy", "floor+rpm/dnf usable"]
    for package, by_size in summary.items():
        sizes = sorted(int(s) for s in by_size)
        rows = []
        for s in sizes:
            med = by_size[str(s)]["median"]
            rat = by_size[str(s)]["ratios"]
            rows.append([str(s), *(_fmt(k, med[k]) for k in MEASURED_KEYS),
                         *(f"{rat[k]:.2f}x" for k in RATIO_KEYS)])
        lines += [f"{package}:", *_table(heads, rows)]
        lines += ["", f"{package}, each measurement at size / at the smallest size ({sizes[0]}):"]
        rows = [[str(s), *(f"{by_size[str(s)]['vs_smallest'][k]:.2f}x" for k in MEASURED_KEYS)] for s in sizes]
        lines += [*_table(["files", *(h for _, h, _ in MEASURES)], rows), ""]
    lines += ["", "targets (from the issue):"]
    for t in report["targets"]:
        met = {True: "MET", False: "NOT MET", None: "n/a"}[t["met"]]
        lines.append(f"  [{met}] {t['target']}: {t['detail']}")
    lines.append(f"\n(total {report['elapsed_s']:.0f}s)")
    return "\n".join(lines)


def _table(heads: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    line = "  ".join(h.rjust(w) for h, w in zip(heads, widths, strict=True))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return out


# --------------------------------------------------------------------------- main


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"sizes must be comma-separated integers: {text!r}") from e
    if not sizes or sizes[0] < 0:
        raise argparse.ArgumentTypeError("give one or more sizes >= 0")
    return sizes


def _packages(text: str) -> list[str]:
    packages = [x.strip() for x in text.split(",") if x.strip()]
    if not packages or len(set(packages)) != len(packages):
        raise argparse.ArgumentTypeError(f"give one or more distinct package names: {text!r}")
    return packages


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="./dev bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=_sizes, default=list(DEFAULT_SIZES),
                   help="comma-separated numbers of extra files in the base image (default: %(default)s)")
    p.add_argument("--packages", type=_packages, default=list(DEFAULT_PACKAGES),
                   help="comma-separated fixture packages to install (default: %(default)s)")
    p.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="runs per size (default: %(default)s)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the numbers to FILE")
    p.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                   help="where the clones go (default: a new folder in $TMPDIR)")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    reexec_in_private_namespace(argv)
    start = time.monotonic()
    info = machine()
    work = make_workdir(args.workdir)
    results: dict[str, dict[int, list[dict[str, float]]]] = {p: {} for p in args.packages}
    try:
        for size in args.sizes:
            t0 = time.monotonic()
            print(f"size {size}: preparing the template and warming the caches", file=sys.stderr, flush=True)
            template = work.snapshot(size)
            benches = [SizeBench(work, size, template, p) for p in args.packages]
            for bench in benches:
                bench.warm_up()
                results[bench.package][size] = []
            print(f"size {size}: waiting {settle():.0f}s since the last removal (SETTLE_S)", file=sys.stderr,
                  flush=True)
            for i in range(args.runs):
                for bench in benches:  # interleaved: each run of each package, in turn
                    r = bench.one_run()
                    results[bench.package][size].append(r)
                    print(f"size {size} {bench.package} run {i + 1}/{args.runs}: "
                          + ", ".join(f"{k} {_fmt(k, r[k])}" for k in MEASURED_KEYS), file=sys.stderr, flush=True)
            for bench in benches:
                bench.clear()
            print(f"size {size}: done in {time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)
    finally:
        _remove(work.root)
    info["loadavg_end"] = list(os.getloadavg())
    summary = summarize(results)
    report = {
        "machine": info,
        "config": {"sizes": args.sizes, "runs": args.runs, "packages": args.packages, "cache": CACHE_METHOD,
                   "settle_s": SETTLE_S,
                   "rss": "wait4 ru_maxrss of the lulayer process (max over it and the children it waited for); "
                          "the detached writer's own VmHWM as writer_rss_mb"},
        "results": summary,
        "targets": targets(summary),
        "elapsed_s": time.monotonic() - start,
    }
    print(format_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
