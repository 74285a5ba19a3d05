"""The resolver in a helper process, started as a layering command starts.

Before a layering command resolves anything it imports: python3-dnf with its C libraries
(about 40 ms here), then libostree's bindings and lulayer's own modules (about as much),
and reads the sysroot, one after the other. A helper forked first imports the resolver's
backend and makes its resolver while the command does the rest, so on a machine with a core
to spare the two overlap; then it answers the command's calls of the Resolver protocol
(resolve, download, with download's progress) over a pair of pipes. It holds nothing of
the command's: it is forked before the sysroot lock is taken or anything is read. The
command may move to a mount namespace of its own after the fork (on a booted host, one with
/sysroot writable: mounts.host_writer_namespace); the helper joins it before each call, so
that it reads and writes the paths of the request where the command would have.

It leads a process group of its own, so a Ctrl-C on the terminal reaches the command
alone; a signal while the command waits for it kills it (signals.child_group), and so
does the command's end (close) and the command's death (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import os
import pickle
import signal
import traceback
from contextlib import suppress
from pathlib import Path
from typing import Any, BinaryIO

from lulayer import linux, signals
from lulayer.errors import LulayerError, ResolveError
from lulayer.layering.resolver import Backend, Resolution, Resolver, ResolveRequest, make_resolver
from lulayer.progress import Progress, ProgressReport
from lulayer.run import ChildFailed, fork_child


class ResolverWorker:
    """A Resolver whose backend runs in a helper process (see the module docstring)."""

    def __init__(self, pid: int, requests: BinaryIO, replies: BinaryIO) -> None:
        self.pid = pid
        self._requests = requests
        self._replies = replies
        self._reaped = False

    @classmethod
    def start(cls, backend: Backend | None = None) -> ResolverWorker:
        """Fork the helper; it makes the resolver for backend (make_resolver) at once."""
        req_read, req_write = os.pipe2(os.O_CLOEXEC)
        rep_read, rep_write = os.pipe2(os.O_CLOEXEC)

        def serve() -> None:
            os.close(req_write)
            os.close(rep_read)
            os.setpgid(0, 0)
            signals.restore_defaults()
            linux.set_pdeathsig(signal.SIGKILL)
            linux.set_name("lulayer-resolve")
            with os.fdopen(req_read, "rb") as requests, os.fdopen(rep_write, "wb") as replies:
                _serve(requests, replies, backend)

        try:
            # Its stdout is our stderr: nothing it prints can reach a --json reader.
            pid = fork_child(serve, output=2)
        finally:
            os.close(req_read)
            os.close(rep_write)
        with suppress(ProcessLookupError, PermissionError):
            os.setpgid(pid, pid)  # the helper does it too: whichever runs first
        return cls(pid, os.fdopen(req_write, "wb"), os.fdopen(rep_read, "rb"))

    @property
    def backend(self) -> Backend:
        """The backend the helper made its resolver with (asked of it)."""
        result: Backend = self._call("backend", None)
        return result

    def resolve(self, request: ResolveRequest) -> Resolution:
        result: Resolution = self._call("resolve", request)
        return result

    def download(self, resolution: Resolution, progress: Progress | None = None) -> tuple[Path, ...]:
        result: tuple[Path, ...] = self._call("download", resolution, progress=progress)
        return result

    def _call(self, method: str, arg: object, progress: Progress | None = None) -> Any:
        with signals.child_group(self.pid):
            try:
                pickle.dump((method, arg), self._requests)
                self._requests.flush()
                while True:
                    kind, value = pickle.load(self._replies)
                    if kind != "progress":
                        break
                    if progress is not None:
                        progress(value)
            except (EOFError, OSError) as e:
                signals.checkpoint()  # killed for a signal: that is what to report
                raise ResolveError(f"the resolver process ended during {method} ({self._ended()})",
                                   hint="what it printed, if anything, is above; run the command again") from e
        if kind == "error":
            raise value
        return value

    def _ended(self) -> str:
        """How the helper ended (it closed its end of the pipe: it is gone or going); reaps it."""
        status = self._reap()
        if status is None:
            return "gone"
        if os.WIFSIGNALED(status):
            return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
        return f"exit status {os.waitstatus_to_exitcode(status)}"

    def _reap(self) -> int | None:
        """Wait for the helper; its wait status, or None when it was reaped already. Once reaped,
        its pid may be another process's: nothing signals it after this."""
        if self._reaped:
            return None
        self._reaped = True
        try:
            return os.waitpid(self.pid, 0)[1]
        except ChildProcessError:
            return None

    def close(self) -> None:
        """End the helper, whatever it is doing, and reap it."""
        if not self._reaped:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)
            self._reap()
        for f in (self._requests, self._replies):
            with suppress(OSError):
                f.close()


def _serve(requests: BinaryIO, replies: BinaryIO, backend: Backend | None) -> None:
    """The helper: answer each (method, argument) until the command closes its end."""
    def reply(kind: str, value: object) -> None:
        pickle.dump((kind, value), replies)
        replies.flush()

    def progress(report: ProgressReport) -> None:
        reply("progress", report)

    resolver: Resolver | None = None
    failure: LulayerError | None = None
    try:
        resolver = make_resolver(backend)
    except LulayerError as e:
        failure = e  # told at the first call, as the command would have seen it there
    while True:
        try:
            method, arg = pickle.load(requests)
        except EOFError:
            return
        try:
            _join_callers_mount_namespace()
            if failure is not None:
                raise failure
            assert resolver is not None
            if method == "backend":
                reply("ok", resolver.backend)
            elif method == "resolve":
                reply("ok", resolver.resolve(arg))
            else:
                reply("ok", resolver.download(arg, progress=progress))
        except LulayerError as e:
            reply("error", e)
        except Exception:
            reply("error", ChildFailed(traceback.format_exc().rstrip()))


def _join_callers_mount_namespace() -> None:
    """Join the mount namespace of the command (our parent) if it is not ours already."""
    ours, theirs = "/proc/self/ns/mnt", f"/proc/{os.getppid()}/ns/mnt"
    if os.stat(ours).st_ino == os.stat(theirs).st_ino:
        return
    fd = os.open(theirs, os.O_RDONLY | os.O_CLOEXEC)
    try:
        linux.setns(fd, linux.CLONE_NEWNS)
    except OSError as e:
        raise ResolveError(f"the resolver process cannot join the command's mount namespace: {e.strerror}") from e
    finally:
        os.close(fd)
