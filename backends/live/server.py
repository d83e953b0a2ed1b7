"""Launch, watch and stop a real vLLM OpenAI server (one process group per server).

``VLLMServer`` runs ``<vllm python> -m vllm.entrypoints.openai.api_server <args> --host
127.0.0.1 --port <free port>`` from an argument list (never a shell string) in its own
session, logs to a file, waits for ``/health`` while watching for the process dying, and
stops the whole process group (SIGTERM, then SIGKILL). ``ServerPool`` keeps the last server
running while consecutive trials ask for the same flags. Both are context managers; as a
safety net each server gets SIGTERM from the kernel when the thread that launched it exits
(PR_SET_PDEATHSIG), so nothing outlives servetune, and no ``atexit`` is needed.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from backends.live.vllm_python import EngineError, find_vllm_python

HOST = "127.0.0.1"
MODULE = "vllm.entrypoints.openai.api_server"
_ENV = {"VLLM_HOST_IP": HOST, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
_ENV_DROP = ("VLLM_CPU_KVCACHE_SPACE",)
_ERROR_LINE = re.compile(r"\b\w*(Error|Exception)\b:|error:|ERROR")
_LOG_PREFIX = re.compile(r"^\(\w+ pid=\d+\)\s*")  # silently overrides --kv-cache-memory-bytes when set


def _die_with_parent() -> None:
    """In the child before exec: ask the kernel to SIGTERM it when the launching thread exits
    (Linux PR_SET_PDEATHSIG), so a server kept between trials never outlives servetune even if
    ``close()`` is never reached (a crash, SIGKILL). vLLM's server stops its engine on SIGTERM."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _strip_host_port(args: Sequence[str]) -> list[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("--host", "--port"):
            skip = True
            continue
        if a.startswith(("--host=", "--port=")):
            continue
        out.append(a)
    return out


class VLLMServer:
    """One vLLM server process group. ``args``: flags after the module (``--host``/``--port``
    are replaced by 127.0.0.1 and a free port). ``cpu``: add ``--enforce-eager`` and require
    ``--kv-cache-memory-bytes`` (the default memory fraction means 92 % of RAM on CPU).
    ``offline``: forbid model-hub access (default: when ``--model`` is a local folder)."""

    def __init__(self, args: Sequence[str], *, python: str | None = None, cpu: bool = True,
                 log_path: str | Path | None = None, startup_timeout_s: float = 300.0,
                 module: str = MODULE, offline: bool | None = None) -> None:
        self.args = _strip_host_port(args)
        if cpu and not any(a.startswith("--kv-cache-memory-bytes") for a in self.args):
            raise ValueError("a CPU vLLM server needs --kv-cache-memory-bytes (else it claims 92% of RAM)")
        if cpu and "--enforce-eager" not in self.args:
            self.args.append("--enforce-eager")
        self.python = python or find_vllm_python()
        self.module = module
        if offline is None:
            model = next((self.args[i + 1] for i, a in enumerate(self.args[:-1]) if a in ("--model", "--model-path")), "")
            offline = cpu or Path(model).is_dir()
        self.offline = offline
        self.startup_timeout_s = startup_timeout_s
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="vllm-", suffix=".log")[1])
        self.port = 0
        self.startup_s = float("nan")
        """Seconds from launch to a healthy /health."""
        self._proc: subprocess.Popen[bytes] | None = None
        self.last_pid: int | None = None
        """Pid (= process-group id) of the last launch, kept after stop (for checks)."""

    # ------------------------------------------------------------------ state
    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def failure_reason(self) -> str:
        """The most telling line of the log: the last error/exception line, else the last line."""
        tail = self.log_tail(60).splitlines()
        hits = [ln for ln in tail if _ERROR_LINE.search(ln)]
        line = (hits or tail or ["(empty log)"])[-1]
        return _LOG_PREFIX.sub("", line).strip()[:300]

    def command(self) -> list[str]:
        return [self.python, "-m", self.module, *self.args, "--host", HOST, "--port", str(self.port)]

    # -------------------------------------------------------------- lifecycle
    def start(self) -> VLLMServer:
        """Launch and wait until healthy; EngineError (with the log's last lines) when it dies
        or is not healthy within ``startup_timeout_s``."""
        if self._proc is not None:
            raise RuntimeError("server already started")
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
        env.update(_ENV)
        if self.offline:
            env.update(_OFFLINE)
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                          preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.last_pid = self._proc.pid
        try:
            self._wait_healthy(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def _wait_healthy(self, t0: float) -> None:
        while True:
            if not self.alive():
                code = self._proc.returncode if self._proc else None
                raise EngineError(f"vLLM server exited with code {code} during start-up: "
                                  f"{self.failure_reason()} (log {self.log_path})\n{self.log_tail()}")
            if self.healthy():
                return
            if time.monotonic() - t0 > self.startup_timeout_s:
                raise EngineError(f"vLLM server not healthy after {self.startup_timeout_s:.0f} s: "
                                  f"{self.failure_reason()} (log {self.log_path})\n{self.log_tail()}")
            time.sleep(0.5)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def check_alive(self) -> None:
        """EngineError if the server died (e.g. mid-trial)."""
        if not self.alive():
            code = self._proc.returncode if self._proc else None
            raise EngineError(f"vLLM server died (exit code {code}): {self.failure_reason()} "
                              f"(log {self.log_path})\n{self.log_tail()}")

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after ``grace_s``; wait for the
        port to be free. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the leader's pid is the group id
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and (proc.poll() is None or _group_alive(pgid)):
            time.sleep(0.2)
        if proc.poll() is None or _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            deadline = time.monotonic() + 10
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.1)
        deadline = time.monotonic() + 10
        while self.port and port_in_use(self.port) and time.monotonic() < deadline:
            time.sleep(0.2)

    def __enter__(self) -> VLLMServer:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ServerPool:
    """Keeps at most ``max_servers`` servers, keyed by their flags: a trial asking for the same
    flags as a running server reuses it; otherwise the least recently used one is stopped first
    (a CPU server holds ~2 GB of RAM)."""

    def __init__(self, *, max_servers: int = 1, python: str | None = None, cpu: bool = True,
                 log_dir: str | Path | None = None, startup_timeout_s: float = 300.0,
                 module: str = MODULE) -> None:
        if max_servers < 1:
            raise ValueError("max_servers must be >= 1")
        self.max_servers = max_servers
        self.python = python
        self.cpu = cpu
        self.log_dir = Path(log_dir) if log_dir else None
        self.startup_timeout_s = startup_timeout_s
        self.module = module
        self._servers: dict[tuple[str, ...], VLLMServer] = {}
        self.starts = 0

    def get(self, args: Sequence[str], *, cpu: bool | None = None) -> VLLMServer:
        """A healthy server with ``args`` (reused or started); ``cpu`` overrides the pool's."""
        key = tuple(_strip_host_port(args))
        server = self._servers.pop(key, None)
        if server is not None and server.alive():
            self._servers[key] = server  # most recently used last
            return server
        if server is not None:
            server.stop()
        while len(self._servers) >= self.max_servers:
            oldest = next(iter(self._servers))
            self._servers.pop(oldest).stop()
        log = None
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = self.log_dir / f"vllm-{self.starts:03d}.log"
        server = VLLMServer(key, python=self.python, cpu=self.cpu if cpu is None else cpu, log_path=log,
                            startup_timeout_s=self.startup_timeout_s, module=self.module)
        self.starts += 1
        server.start()
        self._servers[key] = server
        return server

    def running(self) -> list[VLLMServer]:
        """The servers kept now (least recently used first)."""
        return list(self._servers.values())

    def discard(self, server: VLLMServer) -> None:
        """Stop ``server`` and forget it (after it failed mid-trial)."""
        for k, s in list(self._servers.items()):
            if s is server:
                del self._servers[k]
        server.stop()

    def close(self) -> None:
        while self._servers:
            _, s = self._servers.popitem()
            s.stop()

    def __enter__(self) -> ServerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
