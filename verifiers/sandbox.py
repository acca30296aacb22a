"""Run untrusted Python (a candidate program plus its tests) in a throwaway sandbox.

Each run is three fresh processes:

* the **launcher** (``python -I -S``, root, own session): makes a pid namespace,
  enforces the wall clock, reaps, and writes a trusted report on a private pipe;
* the **init** (pid 1 of that namespace, root): unshares mount, network and IPC
  namespaces, builds the private filesystem view and waits for the runner;
* the **runner** (``python -I -S``, unprivileged): reads program and tests from stdin,
  runs them, and writes its outcome with a per-run nonce on fd 3.

Isolation layers, each best-effort (``SandboxResult.layers`` says which took):

1. uid: as root, the runner drops to a per-worker uid with no passwd entry (gid
   nogroup): it cannot signal, ptrace or write root's files, and ``RLIMIT_NPROC``
   (ignored for root) really bounds fork bombs. Worker uids are claimed with abstract
   unix sockets, so concurrent ttc processes never share one. Without root, a user
   namespace provides the rest and a nested one leaves the runner an unmapped nobody.
2. ``pidns``: killing the init kills every process the program made, even ones that
   ``setsid()`` or daemonise; ``private_proc`` hides host processes. Without a pid
   namespace: a uid-wide ``kill(-1)`` sweep, and the launcher is a child subreaper.
3. ``netns``: no interfaces up; the runner's Python also replaces ``socket.socket``
   (a second layer, bypassable on its own, e.g. with ctypes).
4. ``mountns``: every mount remounted read-only (``ro_root``); ``private_tmp``: a
   size-capped tmpfs on /tmp holds the working directory and vanishes with the run;
   a 0700 ancestor of the interpreter (e.g. /root) is covered by a tmpfs exposing only
   the interpreter tree. Without a mount namespace the workdir is a host temp dir
   removed afterwards, and ``python`` must be reachable by the sandbox uid.
5. ``ipcns``: SysV shared memory and queues die with the run.
6. rlimits (CPU, address space, processes, file size, open files, no core dumps),
   ``setsid``, ``PR_SET_NO_NEW_PRIVS``, parent-death signals, a scrubbed environment,
   isolated interpreters, bounded stdout/stderr (the rest is read and dropped).

A program passes only if the runner reports the nonce after the tests finished and then
exits cleanly itself, so ``sys.exit(0)``, ``os._exit(0)``, a crash before the end, or a
forked child finishing the tests for a runner that was killed never count. A runner that
never reached the program (the sandbox itself failed) raises ``SandboxError``: there is
no verdict to give. The nonce is in the runner's memory, so a program that deliberately
introspects the harness could forge it: the sandbox protects the machine; it cannot make
a grade tamper-proof against code running in the same interpreter as the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hmac
import inspect
import json
import os
import pwd
import re
import resource
import secrets
import select
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from queue import SimpleQueue
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

Status = Literal["pass", "fail", "timeout", "error"]

_HOST_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
_REPORT_LIMIT = 1 << 20  # the launcher's 64 KiB of runner record can grow 6x as JSON escapes
_BACKSTOP_GRACE_S = 5.0
_ERROR_CHARS = 2000


class SandboxError(RuntimeError):
    """The sandbox could not run the program at all: no verdict on the program exists."""


class SandboxLimits(BaseModel):
    wall_s: float = 10.0
    cpu_s: float = 10.0
    memory_mb: int = 1024  # RLIMIT_AS
    nproc: int = 32
    fsize_mb: int = 16
    nofile: int = 64
    tmpfs_mb: int = 64
    output_bytes: int = 64 * 1024  # kept per stream; the rest is read and dropped


class SandboxResult(BaseModel):
    status: Status
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None  # the runner's; negative: killed by that signal
    wall_s: float = 0.0
    cpu_s: float = 0.0
    error: str = ""  # traceback tail or what went wrong: feedback for the model
    truncated: bool = False
    layers: list[str] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "pass"


class _Launcher:
    """Root-side supervisor of one run, executed as ``python -I -S -c <source>``.

    Self-contained on purpose: its source is shipped with ``inspect.getsource``, so it
    may use only the stdlib modules imported in the script preamble and its own members.
    """

    CLONE_NEWNS = 0x00020000
    CLONE_NEWIPC = 0x08000000
    CLONE_NEWUSER = 0x10000000
    CLONE_NEWPID = 0x20000000
    CLONE_NEWNET = 0x40000000
    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
    MS_REMOUNT, MS_NOATIME, MS_NODIRATIME = 32, 1024, 2048
    MS_BIND, MS_MOVE, MS_REC = 4096, 8192, 16384
    MS_PRIVATE, MS_RELATIME = 1 << 18, 1 << 21
    PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 36, 38
    MOUNT_FLAGS: ClassVar[dict[str, int]] = {
        "nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21,
    }

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                    ctypes.c_ulong, ctypes.c_char_p]
        self.layers: list[str] = []
        self.root = os.geteuid() == 0

    def main(self) -> None:
        report: dict[str, Any] = {"timed_out": False, "wait_status": None, "record": "",
                                  "wall_s": 0.0, "cpu_s": 0.0, "setup_error": ""}
        workdir = ""
        try:
            # Orphans come to us rather than to the host's init, which may never reap them.
            self.prctl(self.PR_SET_CHILD_SUBREAPER, 1)
            self.unshare()
            record_r, record_w = os.pipe()
            status_r, status_w = os.pipe()
            start = time.monotonic()
            pid = os.fork()
            if pid == 0:
                os.close(record_r)
                os.close(status_r)
                self.init(record_w, status_w)
            os.close(record_w)
            os.close(status_w)
            report["timed_out"], killed_cpu_s = self.wait(pid, self.cfg["wall_s"])
            report["wall_s"] = time.monotonic() - start
            status = self.read_lines(status_r)
            workdir = status.get("host_workdir", "")
            runner_pid = status.get("runner_pid")
            if runner_pid and "pidns" not in self.layers:
                with contextlib.suppress(OSError):
                    os.killpg(runner_pid, signal.SIGKILL)
            if "pidns" not in self.layers:
                if self.root:
                    self.sweep()  # with a pid namespace the kernel already killed everything
                self.reap(deadline=time.monotonic() + 1.0)
            self.layers = status.get("layers", self.layers)
            report["wait_status"] = status.get("wait_status")
            report["record"] = self.read_bounded(record_r, 65536).decode("utf-8", "replace")
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            report["cpu_s"] = usage.ru_utime + usage.ru_stime + killed_cpu_s
            report["setup_error"] = status.get("setup_error", "")
        except BaseException as exc:  # the report must go out whatever happened
            report["setup_error"] = f"launcher: {type(exc).__name__}: {exc}"
        finally:
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        report["layers"] = self.layers
        os.write(self.cfg["report_fd"], json.dumps(report).encode())

    def unshare(self) -> None:
        """What must happen before the init is forked: a pid namespace (in a user one without root).

        The rest is unshared by the init itself, so this process keeps the host's /proc.
        """
        if not self.root:
            uid, gid = os.getuid(), os.getgid()
            if self.libc.unshare(self.CLONE_NEWUSER) != 0:
                return
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
            self.layers.append("userns")
        if self.libc.unshare(self.CLONE_NEWPID) == 0:
            self.layers.append("pidns")

    def wait(self, pid: int, wall_s: float) -> tuple[bool, float]:
        """Wait for the init until the wall clock runs out.

        Returns whether it had to be killed, and the CPU seconds of what was killed:
        processes nobody waited for are missing from ``RUSAGE_CHILDREN``.
        """
        pidfd = os.pidfd_open(pid)
        try:
            ready, _, _ = select.select([pidfd], [], [], wall_s)
        finally:
            os.close(pidfd)
        killed_cpu_s = 0.0
        if not ready:
            killed_cpu_s = self.namespace_cpu(pid) if "pidns" in self.layers else 0.0
            os.kill(pid, signal.SIGKILL)  # pid 1 of the namespace: takes every process with it
        os.waitpid(pid, 0)
        return not ready, killed_cpu_s

    def namespace_cpu(self, init_pid: int) -> float:
        """CPU seconds used so far by the processes in the init's pid namespace, init excluded."""
        try:
            ns = os.readlink(f"/proc/{init_pid}/ns/pid")
        except OSError:
            return 0.0
        ticks = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == init_pid:
                continue
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") != ns:
                    continue
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            ticks += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
        return ticks / os.sysconf("SC_CLK_TCK")

    def sweep(self) -> None:
        """Kill whatever still runs as the sandbox uid (only without a pid namespace).

        Not possible with one: after its init exits, a pid namespace refuses new processes.
        """
        uid = self.cfg["uid"]
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setresgid(self.cfg["gid"], self.cfg["gid"], self.cfg["gid"])
                os.setresuid(uid, uid, uid)
                # kill(-1) as root would take the whole machine down: check twice.
                if uid > 0 and os.getresuid() == (uid, uid, uid):
                    for _ in range(1000):
                        os.kill(-1, signal.SIGKILL)
            except OSError:
                pass  # ESRCH: nothing of the uid is left
            finally:
                os._exit(0)
        os.waitpid(pid, 0)

    def reap(self, deadline: float) -> None:
        """Collect the orphans we inherited as subreaper, so no zombie holds the uid."""
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                time.sleep(0.01)

    def read_bounded(self, fd: int, limit: int) -> bytes:
        os.set_blocking(fd, False)
        data = b""
        try:
            while len(data) < limit:
                chunk = os.read(fd, limit - len(data))
                if not chunk:
                    break
                data += chunk
        except BlockingIOError:
            pass  # a writer survived (no pid namespace): take what is there
        os.close(fd)
        return data

    def read_lines(self, fd: int) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for line in self.read_bounded(fd, 65536).splitlines():
            merged.update(json.loads(line))
        return merged

    # ---- the init: pid 1 of the new namespaces, still root ----

    def init(self, record_w: int, status_w: int) -> None:
        try:
            self.prctl(self.PR_SET_PDEATHSIG, signal.SIGKILL)
            for name, flag in (("mountns", self.CLONE_NEWNS), ("netns", self.CLONE_NEWNET),
                               ("ipcns", self.CLONE_NEWIPC)):
                if self.libc.unshare(flag) == 0:
                    self.layers.append(name)
            status: dict[str, Any] = {}
            if "mountns" in self.layers:
                workdir = self.filesystem()
            else:  # on the host, so the launcher removes it (we may be killed before we could)
                workdir = status["host_workdir"] = tempfile.mkdtemp(prefix="ttc-sandbox-")
                if self.root:
                    os.chown(workdir, self.cfg["uid"], self.cfg["gid"])
            pid = os.fork()
            if pid == 0:
                os.close(status_w)
                self.exec_runner(workdir, record_w)
            os.close(record_w)
            status |= {"runner_pid": pid, "layers": self.layers}
            os.write(status_w, json.dumps(status).encode() + b"\n")
            _, wait_status = os.waitpid(pid, 0)
            os.write(status_w, json.dumps({"wait_status": wait_status}).encode() + b"\n")
            os._exit(0)
        except BaseException as exc:
            os.write(status_w, json.dumps({"setup_error": f"init: {type(exc).__name__}: {exc}"}).encode())
            os._exit(70)

    def mount(self, src: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
        enc = [None if s is None else s.encode() for s in (src, target, fstype, data)]
        if self.libc.mount(enc[0], enc[1], enc[2], flags, enc[3]) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mount {target}: {os.strerror(err)}")

    def filesystem(self) -> str:
        """Private view: everything read-only, a fresh /tmp, a fresh /proc; returns the workdir."""
        self.mount(None, "/", None, self.MS_REC | self.MS_PRIVATE, None)
        self.remount_readonly()
        tmpfs_opts = f"size={self.cfg['tmpfs_mb']}m,nr_inodes=4096,mode=1777"
        self.mount("tmpfs", "/tmp", "tmpfs", self.MS_NOSUID | self.MS_NODEV, tmpfs_opts)
        self.layers.append("private_tmp")
        for prefix, ancestor in self.cfg["expose"]:
            self.expose(prefix, ancestor)
        if "pidns" in self.layers:
            try:
                self.mount("proc", "/proc", "proc", self.MS_NOSUID | self.MS_NODEV | self.MS_NOEXEC, None)
                self.layers.append("private_proc")
            except OSError:
                pass  # the host /proc stays; other uids' entries are still unreadable
        workdir = "/tmp/work"
        os.mkdir(workdir, 0o700)
        if self.root:
            os.chown(workdir, self.cfg["uid"], self.cfg["gid"])
        return workdir

    def remount_readonly(self) -> None:
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split() for line in f]
        for fields in mounts:
            target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])  # \040 is a space
            opts = fields[5].split(",")
            if "ro" in opts:
                continue
            flags = self.MS_REMOUNT | self.MS_BIND | self.MS_RDONLY
            for opt in opts:  # locked flags must be repeated or the remount is refused
                flags |= self.MOUNT_FLAGS.get(opt, 0)
            try:
                self.mount(None, target, None, flags, None)
            except OSError:
                continue
            if target == "/":
                self.layers.append("ro_root")

    def expose(self, prefix: str, ancestor: str) -> None:
        """Make ``prefix`` reachable although ``ancestor`` is closed to other uids."""
        stage = "/tmp/.stage"
        os.mkdir(stage)
        self.mount(prefix, stage, None, self.MS_BIND | self.MS_REC, None)
        self.mount(None, stage, None, self.MS_REMOUNT | self.MS_BIND | self.MS_RDONLY, None)
        self.mount("tmpfs", ancestor, "tmpfs", self.MS_NOSUID | self.MS_NODEV, "size=64k,mode=755")
        os.makedirs(prefix, 0o755, exist_ok=True)
        self.mount(stage, prefix, None, self.MS_MOVE, None)
        os.rmdir(stage)

    def prctl(self, option: int, value: int) -> None:
        if self.libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl")

    # ---- the runner: an unprivileged, limited, fresh interpreter ----

    def exec_runner(self, workdir: str, record_w: int) -> None:
        try:
            os.setsid()
            if record_w != 3:
                os.dup2(record_w, 3)
            os.set_inheritable(3, True)  # pipes are close-on-exec, and dup2 onto itself keeps that
            os.closerange(4, 1 << 16)
            self.set_limits()
            os.chdir(workdir)
            os.umask(0o077)
            if self.root:
                uid, gid = self.cfg["uid"], self.cfg["gid"]
                os.setgroups([])
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
            elif "userns" in self.layers:
                # A nested user namespace leaves us an unmapped nobody with no
                # capabilities over the mounts built above.
                self.libc.unshare(self.CLONE_NEWUSER)
            self.prctl(self.PR_SET_NO_NEW_PRIVS, 1)
            self.prctl(self.PR_SET_PDEATHSIG, signal.SIGKILL)
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir,
                   "TMPDIR": workdir}
            python = self.cfg["python"]
            os.execve(python, [python, "-I", "-S", "-c", self.cfg["runner_source"]], env)
        except BaseException as exc:
            os.write(2, f"sandbox: cannot start the runner: {exc}\n".encode())
        os._exit(127)

    def set_limits(self) -> None:
        cfg = self.cfg
        cpu = max(1, int(cfg["cpu_s"] + 0.999))
        nproc = cfg["nproc"]
        if not self.root and "userns" not in self.layers:
            nproc += self.count_own_processes()  # the limit counts every process of our uid
        limits = {
            resource.RLIMIT_CPU: (cpu, cpu + 1),  # SIGXCPU first, SIGKILL a second later
            resource.RLIMIT_AS: (cfg["memory_mb"] << 20,) * 2,
            resource.RLIMIT_NPROC: (nproc,) * 2,
            resource.RLIMIT_FSIZE: (cfg["fsize_mb"] << 20,) * 2,
            resource.RLIMIT_NOFILE: (cfg["nofile"],) * 2,
            resource.RLIMIT_CORE: (0, 0),
        }
        for which, value in limits.items():
            resource.setrlimit(which, value)

    def count_own_processes(self) -> int:
        uid, count = os.getuid(), 0
        for entry in os.listdir("/proc"):
            try:
                count += entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                continue
        return count


def _runner_main() -> None:
    """The sandboxed harness: program, then tests, then the nonce on fd 3.

    Runs as ``python -I -S -c <source>`` under the sandbox uid; stdlib only.
    """
    import _socket
    import builtins
    import contextlib
    import json
    import linecache
    import os
    import socket
    import sys
    import traceback

    payload = json.loads(sys.stdin.buffer.read().decode())
    nonce = payload.pop("nonce")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    # Bound before the program runs, so monkeypatching modules cannot reach the report.
    write, dumps, getpid = os.write, json.dumps, os.getpid
    # A child the program forks inherits this harness and fd 3; only this process may report.
    harness_pid = getpid()
    # Before any program code: without this line no program ran, so there is nothing to grade.
    write(3, dumps({"started": nonce}).encode() + b"\n")

    class NoSocket(socket.socket):
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise PermissionError("network access is disabled in the sandbox")

    socket.socket = _socket.socket = NoSocket  # type: ignore[misc]

    scope: dict[str, object] = {"__name__": "__main__", "__builtins__": builtins}

    def run(source: str, filename: str) -> None:
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec"), scope)  # the whole point of the sandbox

    try:
        run(payload["program"], "<program>")
        if payload["tests"]:
            run(payload["tests"], "<tests>")
        entry = payload["entry_point"]
        if entry and callable(scope.get("check")):
            if entry not in scope:
                raise NameError(f"the program does not define {entry!r}")
            scope["check"](scope[entry])  # type: ignore[operator]
        record = {"status": "pass", "nonce": nonce}
    except BaseException as exc:  # SystemExit too: leaving early is not passing
        try:
            # The harness's own frames (source "<string>") say nothing to the model.
            frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != "<string>"]
            lines = traceback.format_list(frames) + traceback.format_exception_only(type(exc), exc)
            header = ["Traceback (most recent call last):\n"] if frames else []
            tail = "".join(header + lines[-12:])[-2000:]
        except BaseException:
            tail = type(exc).__name__
        record = {"status": "fail" if isinstance(exc, AssertionError) else "error", "error": tail}
    if getpid() != harness_pid:
        os._exit(0)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    write(3, dumps(record).encode() + b"\n")
    os._exit(0)


def _script(preamble: str, *objects: object, call: str) -> str:
    parts = [preamble] + [textwrap.dedent(inspect.getsource(obj)) for obj in objects]  # type: ignore[arg-type]
    return "\n\n".join([*parts, call]) + "\n"


_RUNNER_SOURCE = _script("", _runner_main, call="_runner_main()")
_LAUNCHER_SOURCE = _script(
    "import contextlib, ctypes, json, os, re, resource, select, shutil, signal, sys, tempfile, time\n"
    "from typing import Any, ClassVar",
    _Launcher,
    call="_Launcher(json.loads(sys.argv[1])).main()",
)


def _closed_ancestor(path: str) -> str | None:
    """The outermost directory on ``path`` that other uids may not traverse."""
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        if not os.stat(current).st_mode & 0o001:
            return current
    return None


def _process_uids() -> set[int]:
    uids = set()
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if entry.isdigit():
                uids.add(os.stat(f"/proc/{entry}").st_uid)
    return uids


def _claim_uids(base: int, count: int) -> list[tuple[int, socket.socket]]:
    """Reserve ``count`` unused uids; the bound abstract socket is the lock.

    A uid with a passwd entry or any process (even a zombie: it counts against
    RLIMIT_NPROC) is skipped: the sandbox must be the only thing running as it.
    """
    claimed: list[tuple[int, socket.socket]] = []
    busy = _process_uids()
    uid = base
    while len(claimed) < count and uid < base + 10_000:
        try:
            pwd.getpwuid(uid)
            uid += 1
            continue
        except KeyError:
            pass
        if uid in busy:
            uid += 1
            continue
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lock.bind(f"\0ttc-sandbox-uid-{uid}")
            claimed.append((uid, lock))
        except OSError:
            lock.close()
        uid += 1
    if len(claimed) < count:
        raise RuntimeError(f"could not claim {count} sandbox uids from {base}")
    return claimed


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # e.g. a real-time signal the program sent itself
        return f"signal {number}"


def _describe_exit(wait_status: int | None) -> str:
    if wait_status is None:
        return "the runner did not start"
    code = os.waitstatus_to_exitcode(wait_status)
    if code < 0:
        return f"killed by {_signal_name(-code)}"
    return f"the program exited (code {code}) before the tests finished"


def _parse_records(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError, RecursionError):  # the program may scribble anything on fd 3
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def _is_nonce(value: object, nonce: str) -> bool:
    # As bytes: compare_digest refuses non-ASCII str, and the program chooses what it writes.
    return hmac.compare_digest(str(value).encode(), nonce.encode())


def _setup_failure(report: dict[str, Any], err: bytes) -> str:
    """One line on why the runner never reached the program: the launcher's words and the last stderr line."""
    wait_status = report.get("wait_status")
    if report.get("setup_error") or wait_status is None:
        reason = str(report.get("setup_error") or "the runner did not start")
    else:
        code = os.waitstatus_to_exitcode(wait_status)
        how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
        reason = f"the runner {how} before it reached the program"
    last_err = next((line for line in reversed(err.decode("utf-8", "replace").splitlines()) if line.strip()), "")
    detail = " ".join(reason.split())[:500] + (f" ({' '.join(last_err.split())[:500]})" if last_err else "")
    return f"the sandbox could not run the program: {detail}"


class Sandbox:
    """A pool of sandboxed Python workers (one thread each, bounded by ``workers``)."""

    def __init__(self, limits: SandboxLimits | None = None, workers: int | None = None, *,
                 uid_base: int = 61000, gid: int = 65534, python: str | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self.workers = workers or os.cpu_count() or 1
        self.gid = gid
        self.python = python or os.path.join(sys.base_prefix, "bin", f"python{sys.version_info[0]}."
                                             f"{sys.version_info[1]}")
        if not os.path.exists(self.python):
            self.python = sys._base_executable  # type: ignore[attr-defined]
        prefix = sys.base_prefix if self.python.startswith(sys.base_prefix + "/") else os.path.dirname(
            self.python)
        ancestor = _closed_ancestor(prefix)
        self._expose = [(prefix, ancestor)] if ancestor else []
        self._locks = _claim_uids(uid_base, self.workers) if os.geteuid() == 0 else []
        self.uids = [uid for uid, _ in self._locks]
        self._free: SimpleQueue[int | None] = SimpleQueue()
        for uid in self.uids or [None] * self.workers:
            self._free.put(uid)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox")

    async def run(self, program: str, tests: str = "", entry_point: str = "",
                  limits: SandboxLimits | None = None) -> SandboxResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.run_sync, program, tests, entry_point, limits)

    async def run_many(self, jobs: list[tuple[str, str, str]],
                       limits: SandboxLimits | None = None) -> list[SandboxResult]:
        return list(await asyncio.gather(*(self.run(p, t, e, limits) for p, t, e in jobs)))

    def run_sync(self, program: str, tests: str = "", entry_point: str = "",
                 limits: SandboxLimits | None = None) -> SandboxResult:
        uid = self._free.get()
        try:
            return self._run(program, tests, entry_point, limits or self.limits, uid)
        finally:
            self._free.put(uid)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for _, lock in self._locks:
            lock.close()
        self._locks = []

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, program: str, tests: str, entry_point: str, limits: SandboxLimits,
             uid: int | None) -> SandboxResult:
        nonce = secrets.token_hex(16)
        payload = json.dumps({"program": program, "tests": tests, "entry_point": entry_point,
                              "nonce": nonce}).encode()
        report_r, report_w = os.pipe()
        cfg = limits.model_dump() | {
            "uid": uid, "gid": self.gid, "python": self.python, "expose": self._expose,
            "report_fd": report_w, "runner_source": _RUNNER_SOURCE,
        }
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _LAUNCHER_SOURCE, json.dumps(cfg)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(report_w,), env=_HOST_ENV, start_new_session=True,
            )
        finally:
            os.close(report_w)
        deadline = time.monotonic() + limits.wall_s + _BACKSTOP_GRACE_S
        out, err, report_bytes, truncated = _collect(proc, payload, report_r, limits.output_bytes, deadline)
        try:
            report = json.loads(report_bytes)
        except ValueError:
            report = {"setup_error": "the launcher died without a report"}
        return _result(report, nonce, limits, out, err, truncated)


def _collect(proc: subprocess.Popen[bytes], payload: bytes, report_fd: int, limit: int,
             deadline: float) -> tuple[bytes, bytes, bytes, bool]:
    """Feed stdin and read stdout, stderr and the report, keeping ``limit`` bytes a stream.

    Everything past the limit is read and dropped, so a chatty program never blocks on
    a full pipe; past ``deadline`` the launcher's process group is killed.
    """
    assert proc.stdin and proc.stdout and proc.stderr
    out_fd, err_fd, stdin_fd = proc.stdout.fileno(), proc.stderr.fileno(), proc.stdin.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray(), report_fd: bytearray()}
    caps = {out_fd: limit, err_fd: limit, report_fd: _REPORT_LIMIT}
    truncated, sent = False, 0
    sel = selectors.DefaultSelector()
    for fd in bufs:
        sel.register(fd, selectors.EVENT_READ)
    os.set_blocking(stdin_fd, False)
    sel.register(stdin_fd, selectors.EVENT_WRITE)
    drain_until = deadline
    try:
        while sel.get_map():
            timeout = min(deadline, drain_until) - time.monotonic()
            if timeout <= 0:
                break
            for key, _ in sel.select(timeout):
                fd = key.fd
                if fd == stdin_fd:
                    try:
                        sent += os.write(fd, payload[sent:sent + 65536])
                    except BlockingIOError:
                        continue
                    except OSError:  # the reader died: nothing more to send
                        sent = len(payload)
                    if sent >= len(payload):
                        sel.unregister(fd)
                        proc.stdin.close()
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    sel.unregister(fd)
                    if fd == report_fd:  # the launcher is done: stragglers get a moment only
                        drain_until = time.monotonic() + 0.5
                    continue
                room = max(0, caps[fd] - len(bufs[fd]))
                bufs[fd] += chunk[:room]
                truncated |= len(chunk) > room and fd != report_fd
    finally:
        sel.close()
        if proc.poll() is None and time.monotonic() >= deadline:
            os.killpg(proc.pid, signal.SIGKILL)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
        os.close(report_fd)
        proc.wait()
    return bytes(bufs[out_fd]), bytes(bufs[err_fd]), bytes(bufs[report_fd]), truncated


def _result(report: dict[str, Any], nonce: str, limits: SandboxLimits, out: bytes, err: bytes,
            truncated: bool) -> SandboxResult:
    """Turn the launcher's report into a verdict; only the nonce and the runner's clean exit make a pass.

    Raises ``SandboxError`` when the runner never got as far as the program (a broken
    sandbox is not a wrong program).
    """
    records = _parse_records(report.get("record", ""))
    started = any(_is_nonce(r.get("started", ""), nonce) for r in records)
    if not started and not report.get("timed_out"):
        raise SandboxError(_setup_failure(report, err))
    # The harness writes last; the program may scribble before it.
    record = next((r for r in reversed(records) if "started" not in r), {})
    wait_status = report.get("wait_status")
    returncode = None if wait_status is None else os.waitstatus_to_exitcode(wait_status)
    cpu_s = float(report.get("cpu_s", 0.0))
    killed_by = -returncode if returncode is not None and returncode < 0 else 0
    out_of_cpu = killed_by == signal.SIGXCPU or (killed_by == signal.SIGKILL and cpu_s >= limits.cpu_s)
    status: Status
    if report.get("timed_out"):
        status, error = "timeout", f"timed out after {limits.wall_s:g}s of wall-clock time"
    elif record.get("status") == "pass" and _is_nonce(record.get("nonce", ""), nonce) and returncode == 0:
        status, error = "pass", ""
    elif out_of_cpu:
        status, error = "timeout", f"timed out after {limits.cpu_s:g}s of CPU time"
    elif record.get("status") in ("fail", "error"):
        status, error = record["status"], str(record.get("error", ""))
    else:
        status = "error"
        error = report.get("setup_error") or _describe_exit(wait_status)
    return SandboxResult(
        status=status,
        stdout=out.decode("utf-8", "replace"),
        stderr=err.decode("utf-8", "replace"),
        returncode=returncode,
        wall_s=float(report.get("wall_s", 0.0)),
        cpu_s=cpu_s,
        error=error[-_ERROR_CHARS:],
        truncated=truncated,
        layers=list(report.get("layers", [])),
    )
