"""Throw-away servers on 127.0.0.1 for the scale-out tests: PostgreSQL (Debian's server binaries, run as an
unprivileged user — initdb refuses root) and an MLflow tracking server on a PostgreSQL backend store with
served artifacts. Each starts in a temporary folder on a free port and is stopped and removed at the end."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

#: The PostgreSQL user the tests connect as (trust authentication on 127.0.0.1: no password).
DB_USER = "dbexp"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    """The server binaries: ``$PG_BIN``, else the newest ``/usr/lib/postgresql/<version>/bin``."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """``initdb`` into a temporary folder, ``pg_ctl start`` on a free port of 127.0.0.1 (no Unix socket
    outside the folder), databases on demand, ``stop`` removes everything."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="dbexp-postgres-"))
        self.data = self.root / "data"
        self.owner = None  # root cannot run the server: it runs as postgres (or nobody)
        if os.geteuid() == 0:
            for user in ("postgres", "nobody"):
                try:
                    self.owner = pwd.getpwnam(user)
                    break
                except KeyError:
                    continue
            if self.owner is None:
                raise RuntimeError("running as root and neither user postgres nor nobody exists")
            os.chown(self.root, self.owner.pw_uid, self.owner.pw_gid)

    def _run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", self.owner.pw_name, "--"] if self.owner else []
        return subprocess.run(
            [*prefix, *command], cwd=self.root, check=check, capture_output=True, text=True, timeout=120
        )

    def start(self) -> PostgresServer:
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", DB_USER, "--auth=trust", "-E", "UTF8", "--no-sync"
        )
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off -c max_connections=200"
        pg_ctl = str(self.bindir / "pg_ctl")
        self._run(pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")
        return self

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        self._run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER, name)
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


class MlflowServer:
    """``mlflow server`` on a PostgreSQL backend store, artifacts served from a folder only it knows
    (clients upload and download over HTTP), on a free port of 127.0.0.1."""

    def __init__(self, backend_store: str, root: Path) -> None:
        self.backend_store = backend_store
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, deadline_s: float = 180) -> MlflowServer:
        mlflow = Path(sys.executable).with_name("mlflow")
        self.log = open(self.root / "mlflow-server.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                str(mlflow),
                "server",
                "--backend-store-uri",
                self.backend_store,
                "--serve-artifacts",
                "--artifacts-destination",
                str(self.root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "2",
            ],
            cwd=self.root,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + deadline_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=5) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.time() > deadline:
                self.stop()
                printed = (self.root / "mlflow-server.log").read_text()[-3000:]
                raise RuntimeError(f"mlflow server did not start: {printed}")
            time.sleep(0.5)

    def stop(self) -> None:
        import signal

        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if getattr(self, "log", None):
            self.log.close()


@pytest.fixture(scope="session")
def postgres() -> PostgresServer:
    """One throw-away PostgreSQL server for the session (each test creates its own databases)."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/<version>/bin; set PG_BIN)")
    if shutil.which("runuser") is None and os.geteuid() == 0:
        pytest.skip("running as root without runuser: initdb refuses root")
    server = PostgresServer(bindir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(postgres, tmp_path_factory) -> MlflowServer:
    """One MLflow tracking server for the session (its own PostgreSQL database and artifact folder); each
    test logs to experiments of its own."""
    server = MlflowServer(postgres.create_database("mlflow"), tmp_path_factory.mktemp("mlflow_server")).start()
    try:
        yield server
    finally:
        server.stop()
