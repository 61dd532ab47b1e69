"""A real SLURM cluster on this machine for the tests (``slurm_cluster``, one per session).

Every daemon is started as root and listens on 127.0.0.1 only (MariaDB always; Slurm's where the host name
resolves to a loopback address, as here: :meth:`SlurmCluster.loopback_only`); every file (config, munge key
and socket, state, spool, logs, pid files, the accounting database) is in one temporary folder, removed at
the end, and nothing is written to ``/etc``: clients reach the cluster through ``SLURM_CONF``
(:attr:`SlurmCluster.env`, which every test passes to its commands).

* munged, with a key of its own;
* MariaDB and slurmdbd: job accounting, which ``sacct`` reads — submitit (Hydra's SLURM launcher) learns
  through it that a job ended without a result (cancelled, a lost node); without accounting it waits forever;
* slurmctld, and one slurmd per node. Partition ``debug`` (the default) is this machine as one node: its short
  host name, its CPUs and memory as ``slurmd -C`` reports them. Partition ``twonodes`` is the same machine
  emulated as two nodes ``n1`` and ``n2`` (one slurmd each: ``slurmd -N <node>``, its own port, one CPU and
  half the memory), so that a job can span ``--nodes=2`` and Lightning sees ``SLURM_NNODES=2`` as on two
  machines. The two partitions share the machine: a test uses one at a time.

Scheduling is ``select/cons_tres`` (CPUs and memory are consumed), process tracking ``proctrack/linuxproc``
and tasks ``task/none`` (no cgroups in containers). The packages (``slurm-wlm``, ``slurmdbd``, ``munge``,
``mariadb-server``) are installed with apt-get when missing; without root or without apt-get the fixture
skips, saying why.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.engines.servers import free_port

PACKAGES = ("slurm-wlm", "slurmdbd", "munge", "mariadb-server")
BINARIES = (
    "munged",
    "slurmctld",
    "slurmd",
    "slurmdbd",
    "sbatch",
    "sacct",
    "mariadbd",
    "mariadb-install-db",
    "mariadb-admin",
)
#: The emulated nodes of partition ``twonodes``.
EMULATED = ("n1", "n2")


def binary(name: str) -> str | None:
    """A program's path, also in the sbin folders a non-login root shell may lack on its PATH."""
    return shutil.which(name) or next((f"{d}/{name}" for d in ("/usr/sbin", "/sbin") if Path(d, name).exists()), None)


def skip_reason() -> str | None:
    """Why the cluster cannot run here (None: the packages are there, or root can apt-get them)."""
    if os.geteuid() != 0:
        return "SLURM tests need root: they start munged, slurmctld and slurmd (and apt-get what is missing)"
    if not all(binary(b) for b in BINARIES) and not shutil.which("apt-get"):
        return f"SLURM tests need apt-get to install {' '.join(PACKAGES)}"
    return None


def install() -> None:
    """``apt-get install`` the packages when a program is missing; Debian's scripts must not start the daemons
    (``policy-rc.d`` says no while this runs)."""
    if all(binary(b) for b in BINARIES):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = Path("/usr/sbin/policy-rc.d")
    added = not policy.exists()
    if added:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        done = subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES],
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
    finally:
        if added:
            policy.unlink()
    if done.returncode != 0:
        pytest.fail(f"apt-get install {' '.join(PACKAGES)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def wait_until(check: Callable[[], object], timeout: float, what: str, log: Path | None = None) -> object:
    """``check()``'s first true result, polled; after ``timeout`` s a ``TimeoutError`` naming ``what`` with
    the end of ``log``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    raise TimeoutError(f"{what} within {timeout:.0f} s\n{tail}")


def _die_with_parent() -> None:
    """In a daemon's child process before exec: SIGTERM when the test process dies without its teardown."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class SlurmCluster:
    """munged, MariaDB + slurmdbd, slurmctld and the slurmd of every node, under ``folder`` (see the module)."""

    def __init__(self, folder: Path, name: str = "dbexp") -> None:
        self.folder, self.name = Path(folder), name
        self.host = socket.gethostname().split(".")[0]
        self.nodes = [self.host, *EMULATED]
        self.conf = self.folder / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.processes: dict[str, subprocess.Popen] = {}

    # --- the files ---------------------------------------------------------------------------------
    def loopback_only(self) -> bool:
        """Slurm's daemons listen on every address, or (``NoInAddrAny``, ``NoCtldInAddrAny``) on the one their
        host name resolves to: that one where it is a loopback address (as in ``/etc/hosts`` here), so that
        nothing listens outside the machine. Elsewhere (a host name on a network address) they listen on every
        address: the config's 127.0.0.1 would not reach them, and munge's key stays in the folder."""
        with contextlib.suppress(OSError):
            return socket.gethostbyname(self.host).startswith("127.")
        return False

    def write_config(self) -> None:
        f = self.folder
        for sub in ("state", "spool", "log", "run", "munge", "mysql"):
            (f / sub).mkdir(parents=True, exist_ok=True)
        line = subprocess.run([binary("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
        cpus, memory = (int(re.search(rf"{key}=(\d+)", line).group(1)) for key in ("CPUs", "RealMemory"))
        memory -= 512  # room for the daemons
        self.ports = {"slurmctld": free_port(), "slurmdbd": free_port(), "mariadb": free_port()}
        port = {node: free_port() for node in self.nodes}
        munge_socket = f / "munge" / "munge.socket"
        nodes = [
            f"NodeName={self.host} NodeAddr=127.0.0.1 Port={port[self.host]} CPUs={cpus} RealMemory={memory}",
            *(
                f"NodeName={n} NodeHostname={n} NodeAddr=127.0.0.1 Port={port[n]} CPUs={max(1, cpus // 2)} "
                f"RealMemory={memory // 2}"
                for n in EMULATED
            ),
        ]
        settings = [
            f"ClusterName={self.name}",
            *(["CommunicationParameters=NoInAddrAny,NoCtldInAddrAny"] if self.loopback_only() else []),
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={self.ports['slurmctld']}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={munge_socket}",
            f"StateSaveLocation={f / 'state'}",
            f"SlurmdSpoolDir={f / 'spool' / '%n'}",
            f"SlurmctldPidFile={f / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={f / 'run' / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={f / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={f / 'log' / 'slurmd-%n.log'}",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU_Memory",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "SchedulerParameters=sched_interval=2",
            "KillWait=3",  # scancel: SIGTERM, then SIGKILL 3 s later (submitit's job process ignores SIGTERM)
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=127.0.0.1",
            f"AccountingStoragePort={self.ports['slurmdbd']}",
            f"AccountingStoragePass={munge_socket}",  # the munge socket for slurmdbd connections
            *nodes,
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
            f"PartitionName=twonodes Nodes={','.join(EMULATED)} MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(settings) + "\n")
        dbd = f / "slurmdbd.conf"  # slurmdbd reads it beside $SLURM_CONF
        dbd.write_text(
            "\n".join(
                [
                    "AuthType=auth/munge",
                    f"AuthInfo=socket={munge_socket}",
                    f"DbdHost={self.host}",
                    "DbdAddr=127.0.0.1",
                    *(["CommunicationParameters=NoInAddrAny"] if self.loopback_only() else []),
                    f"DbdPort={self.ports['slurmdbd']}",
                    "SlurmUser=root",
                    f"LogFile={f / 'log' / 'slurmdbd.log'}",
                    f"PidFile={f / 'run' / 'slurmdbd.pid'}",
                    "StorageType=accounting_storage/mysql",
                    "StorageHost=127.0.0.1",
                    f"StoragePort={self.ports['mariadb']}",
                    "StorageUser=root",
                    "StorageLoc=slurm_acct_db",
                ]
            )
            + "\n"
        )
        dbd.chmod(0o600)  # slurmdbd refuses a config that others can read

    # --- the daemons -------------------------------------------------------------------------------
    def spawn(self, key: str, *command: str) -> None:
        with open(self.folder / "log" / f"{key}.out", "ab") as log:
            self.processes[key] = subprocess.Popen(
                [binary(command[0]), *command[1:]],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def start(self) -> SlurmCluster:
        f = self.folder
        self.write_config()
        self.start_munge()
        self.start_mariadb()
        self.spawn("slurmdbd", "slurmdbd", "-D")
        wait_until(lambda: self.ok("sacctmgr", "-i", "show", "cluster"), 60, "no slurmdbd", f / "log" / "slurmdbd.log")
        self.spawn("slurmctld", "slurmctld", "-D", "-i")
        wait_until(lambda: self.ok("scontrol", "ping"), 60, "no slurmctld", f / "log" / "slurmctld.log")
        for node in self.nodes:
            self.spawn(f"slurmd-{node}", "slurmd", "-D", "-N", node)
        wait_until(self.idle, 90, f"nodes {self.nodes} not idle", f / "log" / "slurmctld.log")
        return self

    def start_munge(self) -> None:
        m = self.folder / "munge"
        key = m / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.spawn(
            "munged",
            "munged",
            "--foreground",
            "--force",  # as root
            f"--key-file={key}",
            f"--socket={m / 'munge.socket'}",
            f"--pid-file={m / 'munged.pid'}",
            f"--log-file={m / 'munged.log'}",
            f"--seed-file={m / 'munged.seed'}",
        )
        wait_until(lambda: (m / "munge.socket").exists(), 30, "no munged", self.folder / "log" / "munged.out")

    def start_mariadb(self) -> None:
        data, sock = self.folder / "mysql", self.folder / "run" / "mariadb.sock"
        subprocess.run(
            [
                binary("mariadb-install-db"),
                "--user=root",
                f"--datadir={data}",
                "--skip-test-db",
                "--auth-root-authentication-method=normal",  # root@127.0.0.1 (slurmdbd's login), no password
            ],
            capture_output=True,
            check=True,
            timeout=300,
        )
        self.spawn(
            "mariadbd",
            "mariadbd",
            "--no-defaults",
            "--user=root",
            f"--datadir={data}",
            f"--socket={sock}",
            f"--pid-file={self.folder / 'run' / 'mariadb.pid'}",
            "--bind-address=127.0.0.1",
            f"--port={self.ports['mariadb']}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=128M",  # slurmdbd's recommended minimums (it warns below them)
            "--innodb-log-file-size=64M",
            "--innodb-lock-wait-timeout=900",
        )
        ping = ("mariadb-admin", f"--socket={sock}", "-uroot", "ping")
        wait_until(lambda: self.ok(*ping), 60, "no mariadbd", self.folder / "log" / "mariadbd.out")

    def ok(self, *command: str) -> bool:
        return self.run(*command).returncode == 0

    def idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%N %t").stdout.split()
        states = dict(zip(out[::2], out[1::2], strict=False))
        return sorted(states) == sorted(self.nodes) and set(states.values()) == {"idle"}

    # --- for the tests -----------------------------------------------------------------------------
    def run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A client command (sinfo, sbatch, squeue, scancel, sacct, ...) on this cluster."""
        return subprocess.run(
            [binary(command[0]) or command[0], *command[1:]],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def sbatch(self, *args: str, cwd: Path, env: dict | None = None) -> str:
        """Submits a batch job from ``cwd`` (its environment: this cluster's, plus ``env``); its job id."""
        done = subprocess.run(
            [binary("sbatch"), "--parsable", *args],
            cwd=cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().split(";")[0]

    def states(self, job: str) -> dict[str, str]:
        """Accounting's state of each allocation of ``job`` (array tasks ``<id>_<n>``; steps left out)."""
        out = self.run("sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,State").stdout
        return dict(line.split("|", 1) for line in out.splitlines() if line)

    def wait_for(self, job: str, timeout: float = 600) -> dict[str, str]:
        """Waits until no allocation of ``job`` is pending or running; their final states."""

        def ended() -> dict[str, str] | None:
            states = self.states(job)
            busy = ("PENDING", "RUNNING", "COMPLETING", "REQUEUED", "CONFIGURING")
            return states if states and not any(s.startswith(busy) for s in states.values()) else None

        return wait_until(ended, timeout, f"job {job} did not end", self.folder / "log" / "slurmctld.log")

    # --- the end -----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancels what still runs, stops the daemons (SIGTERM, then SIGKILL), then ends any process left with
        this cluster's ``SLURM_CONF`` in its environment (job steps, jobs): by process id, nothing else."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            jobs = self.run("squeue", "-h", "-o", "%i").stdout.split()
            if jobs:
                self.run("scancel", *jobs)
                with contextlib.suppress(TimeoutError):
                    wait_until(lambda: not self.run("squeue", "-h").stdout.strip(), 20, "jobs still queued")
        for process in reversed(self.processes.values()):  # slurmd first, munged last
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self.processes.clear()
        for pid in self.leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def leftovers(self) -> list[int]:
        """Processes (not this one) whose environment holds this cluster's ``SLURM_CONF``."""
        mark, found = f"SLURM_CONF={self.conf}".encode(), []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if mark in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
        return found


@contextlib.contextmanager
def slurm_cluster_running() -> Iterator[SlurmCluster]:
    """Installs what is missing, starts the cluster in a new temporary folder; stops it and removes the folder
    at the end, also when starting fails half-way."""
    install()
    folder = Path(tempfile.mkdtemp(prefix="dbexp-slurm-"))  # short: munge's socket path must fit in 108 bytes
    cluster = SlurmCluster(folder)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The session's SLURM cluster (skipped without root or apt-get, naming why)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with slurm_cluster_running() as cluster:
        yield cluster
