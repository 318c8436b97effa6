"""Real Redis and PostgreSQL servers for a test: on 127.0.0.1, free ports, temporary directories.

Each server is started by the test and stopped by its own process id when the block ends. No init
system runs here. PostgreSQL refuses to run as root: as root, its data directory belongs to the
``postgres`` user the Debian package creates, and ``initdb`` / ``pg_ctl`` run as that user.
"""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class ServerMissing(RuntimeError):
    """A server binary is not installed (``.ci/run`` installs them with apt)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen | None, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} is not listening on 127.0.0.1:{port} after {timeout_s} s")


@contextmanager
def redis_server() -> Iterator[str]:
    """A Redis server without persistence; yields its ``redis://127.0.0.1:PORT`` URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise ServerMissing("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="redis-")
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            tmp,
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, proc, "redis-server")
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(tmp, ignore_errors=True)


def postgres_bin() -> Path:
    """The directory of ``initdb`` / ``pg_ctl`` (Debian keeps them out of PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for exe in ("initdb", "postgres"):
        found = shutil.which(exe)
        if found:
            candidates.append(str(Path(os.path.realpath(found)).parent))
    for c in candidates:
        if (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    raise ServerMissing("PostgreSQL is not installed (apt-get install postgresql)")


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    db: str

    def env(self) -> dict[str, str]:
        """The variables of deploy/celery/dagster.yaml's storage section."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": "",
            "DAGSTER_PG_DB": self.db,
        }


@contextmanager
def postgres_server(db: str = "dagster") -> Iterator[Postgres]:
    """A throw-away cluster (trust auth, no fsync) with database ``db``."""
    bindir = postgres_bin()
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    user = "postgres" if as_root else os.environ.get("USER", "postgres")
    tmp = Path(tempfile.mkdtemp(prefix="pg-"))
    tmp.chmod(0o755)  # the postgres user must reach its data directory and socket
    data, sock = tmp / "data", tmp / "sock"
    for d in (data, sock):
        d.mkdir()
        if as_root:
            shutil.chown(d, "postgres", "postgres")
    port = free_port()

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    started = False
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", user, "--no-sync")
        run(
            str(bindir / "pg_ctl"), "-D", str(data), "-l", str(sock / "server.log"), "-w",
            "-o", f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c max_connections=200",
            "start",
        )  # fmt: skip
        started = True
        _wait_port(port, None, "postgres")
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, db)
        yield Postgres("127.0.0.1", port, user, db)
    finally:
        if started:
            subprocess.run(
                [
                    *prefix,
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],  # fmt: skip
                check=False,
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(tmp, ignore_errors=True)
