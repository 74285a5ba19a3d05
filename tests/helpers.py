"""Shared test helpers: run the real CLI, rpm, chroot and ostree, and compare trees.

Nothing here mocks anything: every helper runs the real program as a subprocess
(in the pytest process's private mount namespace, see conftest.py) or reads
the real file system. Keep the functions general: several test files use them.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import multiprocessing
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fixtures import build as fixture_build
from lulayer.mounts import mount_at

TOP = Path(__file__).resolve().parent.parent
DBPATH = "/usr/share/rpm"
# Files a reader of the rpmdb may leave beside it at run time (never in a commit).
RPMDB_RUNTIME_FILES = frozenset({"rpmdb.sqlite-shm", "rpmdb.sqlite-wal", "rpmdb.sqlite-journal", ".rpm.lock"})
LIVE_FLAGS = frozenset({"--live", "-A", "--apply-live"})
# The fixture base image's packages, and those with htop layered (htop needs ncurses-libs).
BASE = frozenset(fixture_build.BASE_PACKAGES)
WITH_HTOP = BASE | {"htop", "ncurses-libs"}
wait_unlocked = fixture_build.wait_unlocked


# --------------------------------------------------------------------------- running programs


def run(cmd: Sequence[str | os.PathLike[str]], *, check: bool = False, env: Mapping[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run CMD with LC_ALL=C, capturing text output; with check=True a failure raises
    AssertionError carrying both outputs (so pytest shows why)."""
    full_env = dict(os.environ, LC_ALL="C", LANG="C", **(env or {}))
    proc = subprocess.run([os.fspath(c) for c in cmd], capture_output=True, text=True, env=full_env,
                          timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(describe(proc))
    return proc


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    """A completed process as text for assertion messages."""
    args = " ".join(str(a) for a in proc.args)
    return f"$ {args}\nexit {proc.returncode}\n--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"


def cli_argv(sysroot: Path, *args: str) -> list[str]:
    """The command line of `lulayer --sysroot SYSROOT ARGS...`, run from this checkout's interpreter."""
    return [sys.executable, "-m", "lulayer", "--sysroot", str(sysroot), *args]


def lulayer(sysroot: Path, *args: str, check: bool = True, env: Mapping[str, str] | None = None,
            settle: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `lulayer --sysroot SYSROOT ARGS...` (the real CLI, as a subprocess).

    A --live command returns before the deployment it staged for the next boot is
    written (lulayer's staged.py): with settle, this waits for that too, so that the
    caller sees the sysroot at rest (tests/test_staged.py looks before).
    """
    proc = run(cli_argv(sysroot, *args), check=check, env=env)
    if settle and LIVE_FLAGS.intersection(args):
        wait_unlocked(sysroot)
    return proc


def chroot(root: Path, *cmd: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run CMD inside ROOT with chroot(8)."""
    return run(["chroot", str(root), *cmd], check=check)


def assert_htop_runs(root: Path) -> None:
    """The fixture htop runs in root (chroot) and prints its version."""
    ran = chroot(root, "htop")
    assert ran.returncode == 0 and ran.stdout.strip() == "htop 3.3.0", describe(ran)


def rpm(root: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `rpm --root ROOT --dbpath /usr/share/rpm ARGS...`."""
    return run(["rpm", "--root", str(root), "--dbpath", DBPATH, *args], check=check)


def rpm_names(root: Path) -> set[str]:
    """The package names rpm lists in ROOT's database (asserts rpm succeeds)."""
    out = rpm(root, "-qa", "--qf", "%{NAME}\n", check=True).stdout
    return {line for line in out.splitlines() if line}


def ostree_fsck(sysroot: Path) -> None:
    """Assert `ostree fsck` of SYSROOT's repository finds nothing wrong."""
    proc = run(["ostree", "fsck", f"--repo={Path(sysroot) / 'ostree' / 'repo'}"])
    assert proc.returncode == 0, describe(proc)
    assert "corrupt" not in (proc.stdout + proc.stderr).lower(), describe(proc)


def one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Assert PROC failed the way the CLI refuses (the error contract: without --debug an error
    is one line): an exit status above 0 (not a signal), exactly one line on stderr, starting
    `error: ` (so no traceback), holding every one of NEEDLES. Returns that line."""
    assert proc.returncode is not None and proc.returncode > 0, describe(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), describe(proc)
    for needle in needles:
        assert needle in lines[0], f"{needle!r} is not in the error line\n{describe(proc)}"
    return lines[0]


def spawn_lulayer(sysroot: Path, args: Sequence[str], log: Path,
                  env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start `lulayer --sysroot SYSROOT ARGS...` in a session of its own (os.killpg kills it and
    its children), its stdout and stderr to LOG, with env added; the caller waits for it."""
    with open(log, "wb") as out:
        return subprocess.Popen(cli_argv(sysroot, *args), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "LC_ALL": "C", **(env or {})})


def wait_for_child(proc: subprocess.Popen[bytes], name: str) -> int:
    """The pid of the child of proc named name (/proc/PID/comm) once one runs (120 s at most)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the command ended before its child started"
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
            if comm == name and int(rest[1]) == proc.pid:
                return int(entry.name)
        time.sleep(0.002)
    raise AssertionError(f"no {name} child appeared")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def served_over_http(directory: Path, handler: type[http.server.SimpleHTTPRequestHandler] = QuietHandler
                     ) -> Iterator[str]:
    """directory over HTTP on 127.0.0.1, served from a forked process (the resolvers download holding
    the GIL, which would starve a thread); yields its URL."""
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory))) \
            as server:
        child = multiprocessing.get_context("fork").Process(target=server.serve_forever, daemon=True)
        child.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            child.terminate()
            child.join()


# --------------------------------------------------------------------------- sysroot layout


def booted(sysroot: Path) -> Path:
    """The booted deployment folder of the folder sysroot (its live root)."""
    return fixture_build.booted_deployment(sysroot)


def pending(sysroot: Path) -> Path:
    """The default deployment (the next boot's): index 0 in boot order."""
    return fixture_build.deployments(sysroot)[0]


def commit_of(deployment: Path) -> str:
    """The commit checksum of a deployment folder (named CHECKSUM.SERIAL)."""
    return Path(deployment).name.rsplit(".", 1)[0]


def origin_of(deployment: Path) -> str:
    """The text of a deployment's .origin file (beside its folder)."""
    return Path(deployment).with_name(Path(deployment).name + ".origin").read_text()


def staged_record(sysroot: Path) -> dict[str, object] | None:
    """What lulayer recorded to deploy for the next boot and has not written yet."""
    record = Path(sysroot) / fixture_build.STAGED_RECORD
    return json.loads(record.read_text()) if record.exists() else None  # type: ignore[no-any-return]


def next_commit(sysroot: Path) -> str:
    """The commit the next boot gets: the staged one (not yet written), else the default deployment's."""
    record = staged_record(sysroot)
    return str(record["commit"]) if record is not None else commit_of(pending(sysroot))


def repo_of(sysroot: Path) -> Path:
    return Path(sysroot) / "ostree" / "repo"


def checkout_subpath(sysroot: Path, commit: str, subpath: str, dest: Path) -> Path:
    """`ostree checkout --subpath=SUBPATH COMMIT DEST` (as root, ownership is kept)."""
    run(["ostree", "checkout", f"--repo={repo_of(sysroot)}", f"--subpath={subpath}", commit, str(dest)],
        check=True)
    return dest


def point_repo_file(deployment: Path, repo: Path) -> None:
    """Make the deployment's /etc/yum.repos.d/lulayer-fixtures.repo use REPO."""
    f = Path(deployment) / fixture_build.REPO_FILE
    lines = [line if not line.startswith("baseurl=") else f"baseurl=file://{Path(repo).absolute()}"
             for line in f.read_text().splitlines()]
    f.write_text("\n".join(lines) + "\n")


def fstype_at(path: Path) -> str | None:
    """The file system type of the topmost mount whose mount point is exactly PATH, or None."""
    info = mount_at(path)
    return info.fstype if info else None


# --------------------------------------------------------------------------- tree snapshots


@dataclass(frozen=True)
class Entry:
    """What a user sees of one file: type and permission bits, owner, size and content."""
    kind: str  # "file", "dir", "link", "other"
    mode: int
    uid: int
    gid: int
    size: int
    digest: str  # sha256 of a file's content, a symlink's target, "" for a directory


def _entry(path: str, st: os.stat_result) -> Entry:
    if stat.S_ISLNK(st.st_mode):
        return Entry("link", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, 0, os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return Entry("dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, 0, "")
    if stat.S_ISREG(st.st_mode):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return Entry("file", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size, h.hexdigest())
    return Entry("other", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, 0, "")


def tree_entries(root: Path, *, ignore_names: Iterable[str] = (), with_inodes: bool = False,
                 ) -> dict[str, tuple[Entry, int] | Entry]:
    """Every path under ROOT (relative, "/"-separated, ROOT itself as ".") with its Entry;
    with_inodes=True pairs each with its inode number. Symlinks are not followed,
    mount points below ROOT are crossed, names in ignore_names are skipped."""
    skip = set(ignore_names)
    root = Path(root)
    out: dict[str, tuple[Entry, int] | Entry] = {}

    def add(rel: str, full: str) -> None:
        st = os.lstat(full)
        e = _entry(full, st)
        out[rel] = (e, st.st_ino) if with_inodes else e

    add(".", str(root))
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for name in sorted([*dirnames, *(f for f in filenames if f not in skip)]):
            full = os.path.join(dirpath, name)
            add(os.path.relpath(full, root), full)
    return out


def tree_diff(a: Mapping[str, object], b: Mapping[str, object]) -> list[str]:
    """Human-readable differences between two tree_entries() results (empty: the same)."""
    lines = [f"only in first: {p}" for p in sorted(set(a) - set(b))]
    lines += [f"only in second: {p}" for p in sorted(set(b) - set(a))]
    lines += [f"differs: {p}: {a[p]} != {b[p]}" for p in sorted(set(a) & set(b)) if a[p] != b[p]]
    return lines


def temp_files_under(root: Path) -> list[str]:
    """Leftover temporary files (.NAME.<hex>.tmp) under ROOT."""
    found = []
    for dirpath, _dirs, files in os.walk(root):
        found += [os.path.join(dirpath, f) for f in files if f.startswith(".") and f.endswith(".tmp")]
    return found


def tree_snapshot(root: Path, skip: Iterable[str] = ()) -> dict[str, tuple[object, ...]]:
    """Every entry under ROOT (not following symlinks): path -> (mode, uid, gid, size, sha256 or link)."""
    skipped = set(skip)
    snap: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = sorted(d for d in dirnames if os.path.normpath(os.path.join(rel_dir, d)) not in skipped)
        for name in [*dirnames, *sorted(filenames)]:
            full = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if rel in skipped:
                continue
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    content = hashlib.file_digest(f, "sha256").hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = "-> " + os.readlink(full)
            else:
                content = ""
            size = st.st_size if not stat.S_ISDIR(st.st_mode) else 0
            snap[rel] = (st.st_mode, st.st_uid, st.st_gid, size, content)
    return snap


# --------------------------------------------------------------------------- extra fixture RPMs


def build_spec_dir(specs: Path, name: str) -> Path:
    """rpmbuild every SPECS/*.spec (once; cached in the fixture cache as NAME-<hash>, keyed
    by the specs and fixtures/build.py) and return the folder of the built *.rpm files.

    For RPMs that must stay out of the default repository (fixtures/specs/*.spec only
    are built into it): put their specs in a subfolder and add them with make_repo()."""
    h = hashlib.sha256()
    for spec in sorted(Path(specs).glob("*.spec")):
        h.update(spec.name.encode() + b"\0" + spec.read_bytes() + b"\0")
    h.update(Path(fixture_build.__file__).read_bytes())
    final = fixture_build.CACHE / f"{name}-{h.hexdigest()[:16]}"
    if final.exists():
        return final
    with fixture_build._locked(name):
        fixture_build._prune(f"{name}-", final.name.rsplit("-", 1)[1])

        def build(tmp: Path) -> None:
            tmp.mkdir(parents=True)
            for spec in sorted(Path(specs).glob("*.spec")):
                fixture_build._rpmbuild(spec, tmp / ".rpmbuild" / spec.stem)
            for built in sorted((tmp / ".rpmbuild").glob("*/RPMS/*/*.rpm")):
                os.rename(built, tmp / built.name)
            fixture_build.remove_sysroot(tmp / ".rpmbuild")

        return fixture_build._cached(final, build)


def leftover_temp_paths(sysroot: Path) -> list[str]:
    """Leftover temporary files and folders lulayer could leave in SYSROOT: `.*.tmp` files and
    folders (outside the repository's objects), `*.new` folders, lulayer-* scratch in repo/tmp."""
    found = []
    for dirpath, dirs, files in os.walk(sysroot):
        rel = os.path.relpath(dirpath, sysroot)
        if rel == os.path.join("ostree", "repo", "objects"):
            dirs[:] = []
            continue
        found += [os.path.join(dirpath, f) for f in [*files, *dirs] if f.startswith(".") and f.endswith(".tmp")]
        found += [os.path.join(dirpath, d) for d in dirs if d.endswith(".new") or
                  (rel == os.path.join("ostree", "repo", "tmp") and d.startswith("lulayer-"))]
    return sorted(found)
