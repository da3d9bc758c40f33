"""A real Slurm cluster on localhost for the tests: install what is missing, start, wait until ready, stop.

Two (or more) nodes on one machine: one ``slurmd -N <name>`` process per node, every node at 127.0.0.1 on its own
port (the node names do not resolve). With ``accounting=True`` a MariaDB server and ``slurmdbd`` run too, so
``sacct`` is real. Every daemon runs in the foreground as a child of this process, with all its files (munge
key and socket, state, spool, logs, pid files, the database) inside the given folder; ``stop()`` ends them by
pid, and also the job processes the cluster left behind (found by the cluster's own ``SLURM_CONF``).

Standard library only, so ``.ci/run`` can call it with the system Python before any venv exists::

    python3 -m tests.helpers.slurm_cluster install           # apt-get install the Debian packages that are missing
    python3 -m tests.helpers.slurm_cluster up DIR [--no-accounting]   # start, print the env, stop on Ctrl-C
    python3 -m tests.helpers.slurm_cluster check [--no-accounting]    # start, time it, run a 2-node job, stop
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Debian package -> a binary it provides. Installed with --no-install-recommends, only when the binary is missing.
PACKAGES = {
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "slurm-client": "sbatch",
    "munge": "munged",
    "slurmdbd": "slurmdbd",
    "mariadb-server": "mariadbd",
}
_BASE = ("slurmctld", "slurmd", "slurm-client", "munge")  # enough for a cluster without accounting
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
# Variables of an enclosing Slurm job (CI itself may run in one) that must not leak into the test cluster's clients.
_FOREIGN_PREFIXES = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SQUEUE_", "SACCT_", "SINFO_")
_SOCKET_MAX = 100  # sun_path is 108 bytes


def which(name: str) -> str | None:
    """A binary on PATH or in the sbin folders (which a non-login shell may not have on PATH)."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def missing_packages() -> list[str]:
    return [pkg for pkg, binary in PACKAGES.items() if which(binary) is None]


def install(quiet: bool = False) -> list[str]:
    """apt-get install the packages whose binaries are missing; returns what it installed. Raises on failure."""
    missing = missing_packages()
    if not missing:
        return []
    apt = which("apt-get")
    if apt is None:
        raise RuntimeError(f"Slurm packages missing ({' '.join(missing)}) and no apt-get to install them")
    prefix: list[str] = []
    if os.geteuid() != 0:
        sudo = which("sudo")
        if sudo is None:
            raise RuntimeError(f"Slurm packages missing ({' '.join(missing)}); installing them needs root or sudo")
        prefix = [sudo, "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    out = subprocess.DEVNULL if quiet else None
    install_cmd = [*prefix, apt, "install", "-y", "-q", "--no-install-recommends", *missing]
    if subprocess.run(install_cmd, env=env, stdout=out).returncode != 0:
        # stale or absent package lists: update once, then try again
        subprocess.run([*prefix, apt, "update", "-q"], env=env, stdout=out, check=True)
        subprocess.run(install_cmd, env=env, stdout=out, check=True)
    still = missing_packages()
    if still:
        raise RuntimeError(f"apt-get install ran, but these are still missing: {' '.join(still)}")
    return missing


class SlurmClusterError(RuntimeError):
    pass


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:
    """preexec_fn: the daemon gets SIGTERM if this process dies without stopping it (e.g. SIGKILL)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class SlurmCluster:
    """A Slurm cluster of ``nodes`` nodes on localhost, in ``tmpdir``. Use as a context manager, or start()/stop().

    ``.env`` holds what a client process needs (``SLURM_CONF``); ``.subprocess_env()`` is the full environment for
    ``subprocess`` (this process's, minus variables of any enclosing Slurm job); ``.run([...])`` runs a client.
    """

    def __init__(
        self,
        tmpdir: str | os.PathLike,
        accounting: bool = True,
        nodes: int = 2,
        cpus_per_node: int = 2,
        mem_mb_per_node: int = 8000,
        partition: str = "debug",
        cluster_name: str | None = None,
        ready_timeout: float = 60.0,
    ):
        self.dir = Path(tmpdir).resolve()
        self.accounting = accounting
        self.partition = partition
        self.cpus_per_node = cpus_per_node
        self.mem_mb_per_node = mem_mb_per_node
        self.node_names = [f"n{i + 1}" for i in range(nodes)]
        self.cluster_name = cluster_name or ("tlacct" if accounting else "tlnoacct")
        self.ready_timeout = ready_timeout
        self.conf = self.dir / "etc" / "slurm.conf"
        self.log_dir = self.dir / "log"
        self.munge_socket = self.dir / "run" / "munge.sock"
        self.mysql_socket = self.dir / "run" / "mysqld.sock"
        self.startup_s: float | None = None
        self._procs: list[tuple[str, subprocess.Popen]] = []
        self._logs: dict[str, Path] = {}

    # ---------------------------------------------------------------- public
    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def subprocess_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_PREFIXES)}
        env.update(self.env)
        env.update(extra or {})
        return env

    def run(self, args: list[str], check: bool = False, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """Run a Slurm client (sbatch, squeue, ...) against this cluster; text output captured."""
        return subprocess.run(
            args, env=self.subprocess_env(), capture_output=True, text=True, check=check, timeout=timeout, **kw
        )

    def sbatch(self, *args: str) -> str:
        """Submit with ``sbatch --parsable ARGS``; returns the job id."""
        r = self.run(["sbatch", "--parsable", *args], timeout=30)
        if r.returncode != 0:
            raise SlurmClusterError(f"sbatch {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        return r.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol -o show job ID`` as a dict (JobState, Reason, Restarts, NodeList, ...); {} once it is gone."""
        r = self.run(["scontrol", "-o", "show", "job", str(job_id)], timeout=10)
        if r.returncode != 0 or not r.stdout.strip():
            return {}
        fields: dict[str, str] = {}
        for tok in r.stdout.splitlines()[0].split():
            key, sep, value = tok.partition("=")
            if sep:
                fields[key] = value
        return fields

    def wait_job(self, job_id: str, states: set[str] | tuple[str, ...], timeout: float = 60) -> dict[str, str]:
        """Poll until the job's JobState is one of ``states``; returns its fields, raises on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            if time.monotonic() > deadline:
                raise SlurmClusterError(f"job {job_id} not in {sorted(states)} after {timeout:.0f} s: {info}")
            time.sleep(0.2)

    def start(self) -> SlurmCluster:
        missing = missing_packages() if self.accounting else [p for p in missing_packages() if p in _BASE]
        if missing:
            raise SlurmClusterError(f"Slurm packages missing: {' '.join(missing)} (python3 -m {__name__} install)")
        t0 = time.monotonic()
        atexit.register(self.stop)
        try:
            self._prepare()
            self._start_munge()
            if self.accounting:
                self._start_mariadb()
                self._start_slurmdbd()
            self._spawn("slurmctld", [which("slurmctld"), "-D", "-i"])
            for name in self.node_names:
                self._spawn(f"slurmd-{name}", [which("slurmd"), "-D", "-N", name])
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Until sinfo shows every node idle and, with accounting, sacctmgr lists the cluster."""
        deadline = time.monotonic() + (timeout or self.ready_timeout)
        nodes_ok = acct_ok = False
        while True:
            self._check_alive()
            if not nodes_ok:
                r = self._quiet(["sinfo", "-h", "-N", "-o", "%N %t"])
                states = dict(line.split() for line in r.stdout.splitlines() if line.strip()) if r else {}
                nodes_ok = all(states.get(n) == "idle" for n in self.node_names)
            if nodes_ok and self.accounting and not acct_ok:
                r = self._quiet(["sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"])
                acct_ok = bool(r) and self.cluster_name in r.stdout.split()
            if nodes_ok and (acct_ok or not self.accounting):
                return
            if time.monotonic() > deadline:
                raise SlurmClusterError(
                    f"cluster not ready after {timeout or self.ready_timeout:.0f} s "
                    f"(nodes idle: {nodes_ok}, cluster in sacctmgr: {acct_ok})\n{self._log_tails()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Cancel all jobs, end the daemons by pid (TERM, then KILL), then any job process they left."""
        atexit.unregister(self.stop)
        if not self._procs:
            return
        ctld = dict(self._procs).get("slurmctld")
        if ctld is not None and ctld.poll() is None:
            with contextlib.suppress(Exception):
                self.run(["scancel", "--full", "--quiet", "--partition", self.partition], timeout=10)
                deadline = time.monotonic() + 8
                while time.monotonic() < deadline:
                    r = self.run(["squeue", "-h", "-t", "R,CG", "-o", "%i"], timeout=5)
                    if r.returncode != 0 or not r.stdout.strip():
                        break
                    time.sleep(0.2)
        # nodes first, then the controller, then what it depends on
        order = [p for p in self._procs if p[0].startswith("slurmd-")]
        order += [p for p in reversed(self._procs) if not p[0].startswith("slurmd-")]
        for _, proc in order:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            self._reap(proc, 10)
        self._kill_strays()
        self._procs = []

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self, name: str) -> str:
        """A daemon's log (``slurmctld``, ``slurmd-n1``, ``slurmdbd``, ``mariadb``, ``munged``)."""
        return self._logs[name].read_text(errors="replace") if name in self._logs else ""

    # --------------------------------------------------------------- private
    def _prepare(self) -> None:
        for sub in ("etc", "log", "run", "state", "spool", "mysql", "tmp"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        for name in self.node_names:
            (self.dir / "spool" / name).mkdir(exist_ok=True)
        for sock in (self.munge_socket, self.mysql_socket):
            if len(str(sock)) > _SOCKET_MAX:
                raise SlurmClusterError(f"socket path too long for a unix socket ({len(str(sock))} bytes): {sock}")
        key = self.dir / "etc" / "munge.key"
        if not key.exists():
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(1024))
        ctld_port, dbd_port, db_port, *node_ports = _free_ports(3 + len(self.node_names))
        self.mysql_port, self.dbd_port, self.ctld_port = db_port, dbd_port, ctld_port
        self.node_ports = dict(zip(self.node_names, node_ports))
        self.conf.write_text(self._slurm_conf())
        if self.accounting:
            dbd_conf = self.dir / "etc" / "slurmdbd.conf"  # slurmdbd reads it beside SLURM_CONF; must be 0600
            dbd_conf.write_text(self._slurmdbd_conf())
            dbd_conf.chmod(0o600)

    def _slurm_conf(self) -> str:
        d = self.dir
        host = socket.gethostname().split(".")[0]
        auth = f"socket={self.munge_socket},cred_expire=5"
        if self.accounting:
            acct = (
                "AccountingStorageType=accounting_storage/slurmdbd\n"
                f"AccountingStorageHost=localhost\nAccountingStoragePort={self.dbd_port}\n"
                # the connection to slurmdbd takes its munge socket from here, not from AuthInfo
                f"AccountingStoragePass={self.munge_socket}\n"
                "JobAcctGatherType=jobacct_gather/linux\nJobAcctGatherFrequency=30\n"
            )
        else:
            acct = "AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none\n"
        nodes = "".join(
            f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={self.node_ports[n]} "
            f"CPUs={self.cpus_per_node} RealMemory={self.mem_mb_per_node} State=UNKNOWN\n"
            for n in self.node_names
        )
        return f"""\
# written by tests/helpers/slurm_cluster.py: a {len(self.node_names)}-node test cluster on localhost
ClusterName={self.cluster_name}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# the munge socket lives in the cluster folder; a requeued job may start again after cred_expire s (default 120)
AuthInfo={auth}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool/%n
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd-%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
{acct}JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# bf_interval, sched_interval: a requeued job (BeginTime) starts again within 1-2 s of becoming eligible
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,bf_interval=1,sched_interval=1
# 22.05: here, not under SchedulerParameters (ignored there): afterok on a failed job cancels the dependent
DependencyParameters=kill_invalid_depend
JobRequeue=1
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
MailProg=/bin/true
MessageTimeout=10
SlurmctldTimeout=10
SlurmdTimeout=10
InactiveLimit=0
MinJobAge=300
KillWait=2
Waittime=0
TmpFS={d}/tmp
{nodes}PartitionName={self.partition} Nodes={",".join(self.node_names)} Default=YES MaxTime=INFINITE State=UP
"""

    def _slurmdbd_conf(self) -> str:
        d = self.dir
        return f"""\
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={self.dbd_port}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.mysql_port}
StorageUser=slurm
StorageLoc=slurm_acct_db
PidFile={d}/run/slurmdbd.pid
LogFile={d}/log/slurmdbd.log
DebugLevel=info
"""

    def _spawn(self, name: str, argv: list) -> subprocess.Popen:
        out = self.log_dir / f"{name}.out"
        self._logs[name] = out
        with open(out, "ab") as f:
            proc = subprocess.Popen(
                [str(a) for a in argv],
                cwd=self.dir,
                env={**self.subprocess_env(), "TMPDIR": str(self.dir / "tmp")},
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches only us; stop() ends them in order
                preexec_fn=_die_with_parent,
            )
        self._procs.append((name, proc))
        return proc

    def _start_munge(self) -> None:
        d = self.dir
        self._spawn(
            "munged",
            [which("munged"), "-F", "--force", f"--socket={self.munge_socket}", f"--key-file={d}/etc/munge.key",
             f"--pid-file={d}/run/munged.pid", f"--log-file={d}/log/munged.log", f"--seed-file={d}/run/munge.seed",
             "--num-threads=2"],
        )  # fmt: skip
        # --force: the folder may be 0700 (pytest's tmp_path), which munged only warns about then
        self._poll(lambda: self.munge_socket.exists(), "munged socket", 10)

    def _start_mariadb(self) -> None:
        d = self.dir
        # An empty datadir and --skip-grant-tables: no mariadb-install-db (5 s), no users; slurmdbd creates its DB.
        self._spawn(
            "mariadb",
            [which("mariadbd"), "--no-defaults", "--user=root", f"--datadir={d}/mysql", f"--socket={self.mysql_socket}",
             "--bind-address=127.0.0.1", f"--port={self.mysql_port}", "--skip-grant-tables", "--skip-name-resolve",
             f"--pid-file={d}/run/mysqld.pid", f"--log-error={d}/log/mariadb.log", f"--tmpdir={d}/tmp",
             "--skip-log-bin", "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M",
             "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0", "--innodb-use-native-aio=0",
             # slurmdbd creates ~40 tables when the cluster registers: one file and no fsync saves 1-2 s
             "--innodb-file-per-table=0", "--innodb-flush-method=nosync"],
        )  # fmt: skip
        self._logs["mariadb"] = d / "log" / "mariadb.log"
        self._poll(lambda: self._port_open(self.mysql_port), "MariaDB port", 30)

    def _start_slurmdbd(self) -> None:
        self._spawn("slurmdbd", [which("slurmdbd"), "-D"])
        self._logs["slurmdbd"] = self.dir / "log" / "slurmdbd.log"
        self._poll(lambda: self._port_open(self.dbd_port), "slurmdbd port", 30)

    @staticmethod
    def _port_open(port: int) -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", port)) == 0

    def _poll(self, ok, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            self._check_alive()
            if time.monotonic() > deadline:
                raise SlurmClusterError(f"{what} not up after {timeout:.0f} s\n{self._log_tails()}")
            time.sleep(0.05)

    def _check_alive(self) -> None:
        for name, proc in self._procs:
            if proc.poll() is not None:
                raise SlurmClusterError(f"{name} exited with {proc.returncode}\n{self._log_tails()}")

    def _log_tails(self) -> str:
        parts = []
        for name, path in self._logs.items():
            parts.append(f"--- {name} ({path}):\n{_tail(path)}")
        for path in sorted(self.log_dir.glob("*.log")):
            if path not in self._logs.values():
                parts.append(f"--- {path.name}:\n{_tail(path)}")
        return "\n".join(parts)

    def _quiet(self, args: list[str]) -> subprocess.CompletedProcess | None:
        try:
            r = self.run(args, timeout=10)
        except subprocess.TimeoutExpired:
            return None
        return r if r.returncode == 0 else None

    @staticmethod
    def _reap(proc: subprocess.Popen, timeout: float) -> None:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)

    def _kill_strays(self) -> None:
        """slurmstepd and job processes outlive slurmd; they carry this cluster's SLURM_CONF in their environ."""
        marker = f"SLURM_CONF={self.conf}".encode()
        me = os.getpid()
        for _ in range(3):
            found = []
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit() or int(entry.name) == me:
                    continue
                try:
                    environ = (entry / "environ").read_bytes().split(b"\0")
                    comm = (entry / "comm").read_text().strip()
                except OSError:
                    continue
                if marker in environ and (comm == "slurmstepd" or any(e.startswith(b"SLURM_JOB_ID=") for e in environ)):
                    found.append(int(entry.name))
            if not found:
                return
            for pid in found:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "install"
    accounting = "--no-accounting" not in argv
    if cmd == "install":
        done = install()
        print("slurm packages: installed " + " ".join(done) if done else "slurm packages: all present")
        return 0
    if cmd == "check":
        with tempfile.TemporaryDirectory(prefix="slurm-") as d, SlurmCluster(d, accounting=accounting) as c:
            print(f"ready in {c.startup_s:.2f} s ({c.cluster_name}, nodes {','.join(c.node_names)})")
            t = time.monotonic()
            r = c.run(["srun", "-N2", "--ntasks-per-node=1", "-l", "printenv", "SLURMD_NODENAME"], timeout=60)
            print(r.stdout + r.stderr + f"srun: rc {r.returncode} in {time.monotonic() - t:.2f} s")
            return r.returncode
    if cmd == "up" and len(argv) > 1:

        def _interrupt(*_):
            raise KeyboardInterrupt

        # a background job of a non-interactive shell starts with SIGINT ignored: take both signals explicitly
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)
        with SlurmCluster(argv[1], accounting=accounting) as c:
            print(f"ready in {c.startup_s:.2f} s; in another shell: export SLURM_CONF={c.conf}", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
