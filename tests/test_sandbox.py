"""Hostile programs against the sandbox: each checks the verdict and that the host is untouched."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from verifiers.sandbox import Sandbox, SandboxError, SandboxLimits, SandboxResult

# Generous clocks so a busy CI machine cannot turn a pass into a timeout; the tests that
# expect a timeout set short ones. "No hang" bounds allow for the launcher's backstop.
LIMITS = SandboxLimits(wall_s=10.0, cpu_s=5.0, memory_mb=256, nproc=16, output_bytes=16 * 1024)
NO_HANG_S = 10.0
AS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(LIMITS, workers=2) as box:
        yield box


def uid_processes(uids: list[int]) -> list[int]:
    """Pids of live processes owned by any of ``uids``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue  # exited meanwhile
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        if int(uid_line.split()[1]) in uids:
            found.append(int(entry))
    return found


@pytest.fixture(autouse=True)
def host_is_clean(sandbox: Sandbox) -> Iterator[None]:
    yield
    if sandbox.uids:
        assert uid_processes(sandbox.uids) == []
    assert not [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("ttc-sandbox-")]


def run(sandbox: Sandbox, program: str, tests: str = "", **limits: float) -> SandboxResult:
    return sandbox.run_sync(program, tests, limits=LIMITS.model_copy(update=limits))


def test_layers_and_basic_verdicts(sandbox: Sandbox) -> None:
    ok = run(sandbox, "def f(x): return x + 1\nprint('hi')", "assert f(1) == 2")
    assert ok.status == "pass" and ok.passed and ok.stdout == "hi\n" and ok.returncode == 0
    wrong = run(sandbox, "def f(x): return x", "assert f(1) == 2")
    assert wrong.status == "fail" and "assert f(1) == 2" in wrong.error and "AssertionError" in wrong.error
    broken = run(sandbox, "def f(x) return x", "assert f(1) == 1")
    assert broken.status == "error" and "SyntaxError" in broken.error
    if AS_ROOT:
        expected = {"pidns", "netns", "mountns", "ipcns", "ro_root", "private_tmp", "private_proc"}
        assert expected <= set(ok.layers)


@pytest.mark.parametrize(("program", "clocks"), [
    ("while True:\n    pass\n", ("CPU", "wall")),  # on a busy machine the wall clock may run out first
    ("import time\ntime.sleep(60)", ("wall",)),  # sleeping uses no CPU: only the wall clock catches it
])
def test_infinite_loop_times_out(sandbox: Sandbox, program: str, clocks: tuple[str, ...]) -> None:
    start = time.monotonic()
    result = run(sandbox, program, wall_s=1.5, cpu_s=1.0)
    assert result.status == "timeout" and any(clock in result.error for clock in clocks)
    assert time.monotonic() - start < 1.5 + NO_HANG_S


def test_memory_bomb_is_an_error(sandbox: Sandbox) -> None:
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = run(sandbox, "hog = []\nwhile True:\n    hog.append(bytearray(32 << 20))")
    assert result.status == "error" and "MemoryError" in result.error
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB: nothing leaked to us
    assert run(sandbox, "x = 1", "assert x == 1").passed  # and the pool still works


@pytest.mark.skipif(not AS_ROOT, reason="per-uid process limits need root to switch uids")
def test_fork_bomb_is_contained(sandbox: Sandbox) -> None:
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    peak, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], len(uid_processes(sandbox.uids)))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = run(sandbox, bomb, wall_s=1.5, cpu_s=1.0)
    finally:
        stop.set()
        watcher.join()
    assert result.status == "timeout"
    assert 1 < peak[0] <= LIMITS.nproc
    assert uid_processes(sandbox.uids) == []  # checked right away, not only by the fixture


def test_daemonised_children_do_not_survive(sandbox: Sandbox) -> None:
    program = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
    )
    start = time.monotonic()
    result = run(sandbox, program, "assert True")
    assert result.status == "pass" and time.monotonic() - start < LIMITS.wall_s  # nobody waited for it
    if sandbox.uids:
        assert uid_processes(sandbox.uids) == []


@pytest.fixture
def canaries() -> Iterator[list[Path]]:
    """A canary in a root-only dir, and one in a world-writable dir (only read-only mounts guard that)."""
    dirs = [Path(tempfile.mkdtemp(dir="/var/tmp", prefix="canary-")) for _ in range(2)]
    os.chmod(dirs[0], 0o755)
    os.chmod(dirs[1], 0o777)
    files = [d / "canary.txt" for d in dirs]
    for f, mode in zip(files, (0o644, 0o666), strict=True):
        f.write_text("untouched\n")
        os.chmod(f, mode)
    yield files
    for d in dirs:
        for child in d.iterdir():
            child.unlink()
        d.rmdir()


@pytest.mark.skipif(not AS_ROOT, reason="needs root to drop to the sandbox uid and build mounts")
def test_files_outside_the_workdir_are_untouchable(sandbox: Sandbox, canaries: list[Path]) -> None:
    token = secrets.token_hex(6)
    attempts = []
    for canary in canaries:
        attempts += [
            f"open({str(canary)!r}, 'w').write('pwned')",
            f"open({str(canary)!r}, 'a').write('pwned')",
            f"os.remove({str(canary)!r})",
            f"os.rename({str(canary)!r}, {str(canary)!r} + '.moved')",
            f"os.chmod({str(canary)!r}, 0o777)",
            f"open({str(canary.parent / 'new.txt')!r}, 'w').write('x')",
        ]
    attempts += [f"open('/tmp/xyz-{token}', 'w').write('x')", f"open('/var/tmp/xyz-{token}', 'w').write('x')",
                 f"open('/dev/shm/xyz-{token}', 'w').write('x')"]
    program = "import os\nopen('mine.txt', 'w').write('ok')\nprint('own dir:', os.getcwd())\n"
    for attempt in attempts:
        program += f"try:\n    {attempt}\n    print('DONE', {attempt!r})\n"
        program += "except OSError as e:\n    print('denied', e)\n"
    result = run(sandbox, program, "assert open('mine.txt').read() == 'ok'")
    assert result.status == "pass", result.error
    for canary in canaries:
        assert canary.read_text() == "untouched\n" and sorted(os.listdir(canary.parent)) == ["canary.txt"]
    assert oct(canaries[0].stat().st_mode & 0o777) == oct(0o644)
    for leftover in (f"/tmp/xyz-{token}", f"/var/tmp/xyz-{token}", f"/dev/shm/xyz-{token}"):
        assert not os.path.exists(leftover)
    # /tmp is private to the run, so that one write may succeed there; nothing else may.
    assert [line for line in result.stdout.splitlines() if line.startswith("DONE")] in (
        [], [f"DONE open('/tmp/xyz-{token}', 'w').write('x')"])
    workdir = result.stdout.split("own dir: ")[1].split()[0]
    assert not os.path.exists(os.path.join(workdir, "mine.txt"))  # gone with the run


def test_environment_is_scrubbed(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "s3cr3t-" + secrets.token_hex(8)
    monkeypatch.setenv("TTC_SECRET", secret)
    program = (
        "import os\n"
        "print(sorted(os.environ))\n"
        f"for pid in ['self', '1', '2', {os.getpid()!r}, {os.getppid()!r}] + os.listdir('/proc'):\n"
        "    try:\n"
        "        print(pid, open(f'/proc/{pid}/environ', 'rb').read())\n"
        "    except OSError as e:\n"
        "        print(pid, 'denied', type(e).__name__)\n"
    )
    result = run(sandbox, program, output_bytes=1 << 20)
    assert result.status == "pass" and not result.truncated
    assert secret not in result.stdout and "TTC_SECRET" not in result.stdout
    assert "['HOME', 'LANG', 'PATH', 'TMPDIR']" in result.stdout


@pytest.fixture
def loopback_server() -> Iterator[tuple[int, list[bytes]]]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.1)
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1.0)
                received.append(b"<connected>" + conn.recv(1024))

    thread = threading.Thread(target=serve)
    thread.start()
    yield server.getsockname()[1], received
    stop.set()
    thread.join()
    server.close()


def test_network_is_unreachable(sandbox: Sandbox, loopback_server: tuple[int, list[bytes]]) -> None:
    port, received = loopback_server
    program = (
        "import ctypes, socket, struct\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'leak')\n"
        "    print('python: CONNECTED')\n"
        "except OSError as e:\n"
        "    print('python:', e)\n"
        # Bypass the Python layer: only the network namespace is left to stop this.
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "fd = libc.socket(2, 1, 0)\n"
        f"addr = struct.pack('<H', 2) + struct.pack('>H', {port}) + bytes([127, 0, 0, 1]) + bytes(8)\n"
        "rc = libc.connect(fd, addr, 16)\n"
        "print('libc:', fd, rc, ctypes.get_errno())\n"
        "if rc == 0:\n"
        "    libc.send(fd, b'leak', 4, 0)\n"
    )
    result = run(sandbox, program, "x = 1")
    assert result.status == "pass", result.error
    assert "python: network access is disabled" in result.stdout
    assert "CONNECTED" not in result.stdout
    if AS_ROOT:
        libc_line = next(line for line in result.stdout.splitlines() if line.startswith("libc:"))
        assert libc_line.split()[2] == "-1"  # connect failed: no route out of the namespace
    time.sleep(0.2)  # let a connection that did get through show up
    assert received == []


def test_cannot_signal_the_parent(sandbox: Sandbox) -> None:
    me, group = os.getpid(), os.getpgid(0)
    outward = ("os.kill(os.getppid(), 9)", f"os.kill({me}, 9)", f"os.killpg({group}, 9)",
               f"os.kill({me}, signal.SIGTERM)")
    program = "import os, signal\n"
    for call in (*outward, "os.killpg(os.getpgid(os.getppid()), 9)"):
        # Flushed: the last call may kill the program, and output still in its buffer with it.
        program += f"try:\n    {call}\n    print('sent', {call!r}, flush=True)\n"
        program += "except OSError as e:\n    print('denied', e, flush=True)\n"
    result = run(sandbox, program, "x = 1")
    assert result.status in ("pass", "error")  # the program may kill itself; nothing else
    said = result.stdout.splitlines()
    assert len(said) >= len(outward) and all(line.startswith("denied") for line in said[: len(outward)]), said
    # Still here, and the pool still answers.
    assert run(sandbox, "x = 1", "assert x == 1").passed
    # The program-to-kill-everything-it-can must not hurt a sibling run either.
    kill_all = "import os\ntry:\n    os.kill(-1, 9)\nexcept OSError:\n    pass"
    assert run(sandbox, kill_all).status in ("pass", "error")


@pytest.mark.parametrize("exit_call",
                         ["import sys; sys.exit(0)", "raise SystemExit(0)", "import os; os._exit(0)"])
def test_early_exit_is_not_a_pass(sandbox: Sandbox, exit_call: str) -> None:
    program = f"def f(x):\n    return 0\n{exit_call}\n"
    result = run(sandbox, program, "assert f(1) == 1")
    assert result.status == "error" and not result.passed
    # Exiting from inside the tests does not count either.
    inside = run(sandbox, "def f(x):\n    return 0\n", f"{exit_call}\nassert f(1) == 1")
    assert inside.status == "error"


def test_forged_report_is_not_a_pass(sandbox: Sandbox) -> None:
    program = (
        "import os, json\n"
        "os.write(3, json.dumps({'status': 'pass', 'nonce': '0' * 32}).encode() + b'\\n')\n"
        "os._exit(0)\n"
    )
    assert run(sandbox, program, "assert False").status == "error"


def test_a_forked_child_cannot_pass_for_a_killed_runner(sandbox: Sandbox) -> None:
    # The child inherits the harness (nonce, fd 3) and finishes the tests while the
    # process that was graded burns its CPU budget and is killed.
    program = "def f(x):\n    return x + 1\nimport os\nif os.fork():\n    while True:\n        pass\n"
    result = run(sandbox, program, "assert f(1) == 2", wall_s=3.0, cpu_s=1.0)
    assert not result.passed and result.status == "timeout", (result.status, result.returncode)
    assert result.returncode != 0


def test_a_sandbox_that_cannot_start_raises(sandbox: Sandbox) -> None:
    # 8 MiB of address space is too little to load the interpreter: no program ran, so no verdict.
    with pytest.raises(SandboxError, match="could not run the program") as caught:
        run(sandbox, "x = 1", "assert x == 1", memory_mb=8)
    assert "\n" not in str(caught.value)
    # A program that dies with the same exit code is still graded: it did run.
    died = run(sandbox, "import os\nos._exit(127)", "assert True")
    assert died.status == "error" and "code 127" in died.error
    assert run(sandbox, "x = 1", "assert x == 1").passed  # the worker is back in the pool


def test_huge_output_is_bounded(sandbox: Sandbox) -> None:
    start = time.monotonic()
    flood_program = (
        "import sys\nwhile True:\n"
        "    sys.stdout.write('x' * 65536)\n    sys.stderr.write('e' * 65536)\n"
    )
    flood = run(sandbox, flood_program, wall_s=1.0)
    assert flood.status == "timeout" and flood.truncated
    assert len(flood.stdout) <= LIMITS.output_bytes and len(flood.stderr) <= LIMITS.output_bytes
    big = run(sandbox, "print('y' * 10**7)", "assert True")
    assert big.status == "pass" and big.truncated and len(big.stdout) == LIMITS.output_bytes
    assert time.monotonic() - start < 1.0 + 2 * NO_HANG_S


def test_recursion_bombs_are_errors(sandbox: Sandbox) -> None:
    plain = run(sandbox, "def r(n):\n    return r(n + 1)\nr(0)")
    assert plain.status == "error" and "RecursionError" in plain.error
    # Recursing through C (map) with no recursion limit overflows the C stack: a segfault.
    deep_bomb = "import sys\nsys.setrecursionlimit(10**8)\ndef r(n):\n    return list(map(r, [n + 1]))\nr(0)"
    deep = run(sandbox, deep_bomb)
    assert deep.status == "error" and "SIGSEGV" in deep.error


def test_pool_runs_candidates_concurrently() -> None:
    program = "import os, time\nstart = time.time()\ntime.sleep(2.0)\nprint(start, time.time(), os.getuid())"
    with Sandbox(LIMITS, workers=4) as box:
        results = asyncio.run(box.run_many([(program, "", "")] * 4))
        assert all(r.status == "pass" for r in results)
        spans = [tuple(map(float, r.stdout.split()[:2])) for r in results]
        # How many ran at once at the busiest moment; a loaded machine may stagger the starts.
        peak = max(sum(s <= start < e for s, e in spans) for start, _ in spans)
        assert peak >= 2
        if AS_ROOT:
            assert len({r.stdout.split()[2] for r in results}) == 4  # one uid per worker
        uids = box.uids
    if AS_ROOT:
        assert uid_processes(uids) == []
