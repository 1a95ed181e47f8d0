"""A real one-node SLURM cluster (munge + MariaDB + slurmdbd + slurmctld + slurmd) in a temp dir.

Why a real one: submitit's requeue path (``scontrol requeue``, job state via ``sacct``) and
the SLURM -> torch.distributed environment can only be proven against a real controller.
Why accounting (slurmdbd + MariaDB): without it, submitit cannot see a job's final state and
waiting on a cancelled job never returns.

Isolation, so nothing on the machine is touched and a crashed run cannot poison the next one:

- every daemon listens on a free port picked at start (no fixed 6817-6819 / 3306), and munge
  uses its own key and socket inside the cluster dir;
- every daemon is started with ``ANATPLANE_SLURM_HARNESS=<cluster dir>`` in its environment;
  that marker (not a process name) finds everything the cluster spawned, including
  ``slurmstepd``, at teardown and when cleaning up after a harness that died;
- the owning process holds ``flock`` on ``<cluster dir>/owner.lock`` for the cluster's life;
  marked processes whose cluster lock can be taken belong to a harness that died (SIGKILL,
  OOM, a crashed CI job) and are stopped before a new cluster starts.  Live clusters of other
  sessions are left alone (their ports differ, so several can coexist).

Run as root (daemons switch to the ``munge`` and ``mysql`` users).  ``python -m
tests.slurm.cluster`` starts one and waits, printing ``export SLURM_CONF=...``.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

MARKER = "ANATPLANE_SLURM_HARNESS"
OWNER_LOCK = "owner.lock"
CLUSTER_NAME = "anatplane"
PARTITION = "debug"

_BINARIES = ["munged", "mungekey", "munge", "slurmctld", "slurmd", "slurmdbd", "sbatch", "srun",
             "squeue", "sacct", "sacctmgr", "scontrol", "scancel", "sinfo", "mariadbd",
             "mariadb-install-db", "mariadb"]
_DEB_PACKAGES = "munge slurmctld slurmd slurm-client slurmdbd mariadb-server"


class ClusterUnavailable(RuntimeError):
    """This machine cannot host the test cluster (not root, packages missing, another harness):
    the caller should skip with this message as the reason."""


class ClusterStartError(RuntimeError):
    """A prerequisite was there but a daemon did not come up: a real failure, with log tails."""


def unavailable_reason() -> str | None:
    """Why a cluster cannot be started here, or None when it can."""
    if os.geteuid() != 0:
        return "SLURM harness needs root (daemons run as root/munge/mysql); run `make test` as root"
    missing = [b for b in _BINARIES if _which(b) is None]
    if missing:
        return (f"SLURM harness needs Debian packages ({_DEB_PACKAGES}); missing executables: "
                f"{', '.join(missing)}")
    for user in ("munge", "mysql"):
        try:
            import pwd
            pwd.getpwnam(user)
        except KeyError:
            return f"system user {user!r} missing (created by the munge/mariadb-server packages)"
    return None


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _marked_processes() -> dict[int, str]:
    """pid -> marker value for every live process started under any harness."""
    found: dict[int, str] = {}
    key = MARKER.encode() + b"="
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:  # exited meanwhile, or a kernel thread
            continue
        for item in env.split(b"\0"):
            if item.startswith(key):
                found[int(entry)] = item[len(key):].decode(errors="replace")
                break
    return found


def _with_descendants(pids: list[int]) -> list[int]:
    """``pids`` plus every process below them (job tasks under slurmstepd carry no marker)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _kill_all(pids: list[int], grace_s: float = 10.0) -> list[int]:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL; returns the pids that had to be killed."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.1)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return alive


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _owner_alive(root: str) -> bool:
    """True while some process holds ``<root>/owner.lock``."""
    try:
        fd = os.open(Path(root) / OWNER_LOCK, os.O_RDWR)
    except OSError:  # no lock file: the dir is gone or was never ours
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we may just have taken
    return False


def clean_stale() -> list[int]:
    """Stop every process of a cluster whose harness died, and remove its directory.

    Returns the pids stopped.  Clusters with a live owner are not touched.
    """
    by_root: dict[str, list[int]] = {}
    for pid, root in _marked_processes().items():
        by_root.setdefault(root, []).append(pid)
    stopped: list[int] = []
    for root, pids in by_root.items():
        if _owner_alive(root):
            continue
        pids = _with_descendants(pids)
        _kill_all(pids, grace_s=5.0)
        stopped += pids
        if Path(root).name.startswith("anatplane-slurm-"):
            shutil.rmtree(root, ignore_errors=True)
    return sorted(stopped)


class SlurmCluster:
    """Context manager: ``with SlurmCluster() as c: subprocess.run(["sinfo"], env=c.env)``."""

    def __init__(self, root: Path | None = None, accounting: bool = True, keep: bool = False,
                 cred_expire_s: int = 10):
        #: a requeued job may start again only after the credential lifetime (SLURM default
        #: 120 s); short here so requeue tests do not sit idle
        self.cred_expire_s = cred_expire_s
        self.root = Path(root) if root else None
        self.accounting = accounting
        self.keep = keep
        self._lock_fd: int | None = None
        self._own_root = root is None
        self.env: dict[str, str] = {}
        self.ports: dict[str, int] = {}

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> "SlurmCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "SlurmCluster":
        reason = unavailable_reason()
        if reason:
            raise ClusterUnavailable(reason)
        self.stale_cleaned = clean_stale()
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="anatplane-slurm-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            os.chmod(self.root, 0o755)  # munge/mysql users must traverse it
            for sub in ("state", "spool", "log", "munge", "mysql"):
                (self.root / sub).mkdir(exist_ok=True)
            self.ports = {k: _free_port() for k in ("slurmctld", "slurmd", "slurmdbd", "mysql")}
            self.conf = self.root / "slurm.conf"
            self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
            self._daemon_env = {**self.env, MARKER: str(self.root)}
            self._start_munge()
            self._write_slurm_conf()
            if self.accounting:
                self._start_mariadb()
                self._start_slurmdbd()
            self._run(["slurmctld", "-f", str(self.conf)], daemon=True)
            self._run(["slurmd", "-f", str(self.conf), "-N", "localhost"], daemon=True)
            self._wait(lambda: self._sinfo_state() in ("idle", "mixed", "allocated"), 30,
                       "node never became idle", ["slurmctld.log", "slurmd.log"])
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Cancel jobs, stop every process that carries our marker, release the lock."""
        if self.root is not None and self.env:
            if (self.root / "slurmctld.pid").exists():
                subprocess.run(["scancel", "--user", "root"], env=self.env, capture_output=True,
                               timeout=30)
                self._wait(lambda: not self.squeue_ids(), 20, None)
            mine = [p for p, v in _marked_processes().items() if v == str(self.root)]
            _kill_all(_with_descendants(mine))
            if self._own_root and not self.keep:
                shutil.rmtree(self.root, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _acquire_lock(self) -> None:
        """Held (fd not inherited by the daemons) until stop(): says this cluster has an owner."""
        fd = os.open(self.root / OWNER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ClusterStartError(f"{self.root} is in use by another live harness") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    # ---------------------------------------------------------------- daemons
    def _run(self, cmd: list[str], daemon: bool = False, **kw) -> subprocess.CompletedProcess:
        env = self._daemon_env if daemon else self.env
        cmd = [_which(cmd[0]) or cmd[0], *cmd[1:]]  # sbin may be missing from a non-login PATH
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, **kw)
        if res.returncode != 0:
            raise ClusterStartError(f"{' '.join(cmd)} exited {res.returncode}: "
                                    f"{res.stderr.strip() or res.stdout.strip()}")
        return res

    def _start_munge(self) -> None:
        m = self.root / "munge"
        key = m / "munge.key"
        self._run(["mungekey", "--create", "--force", f"--keyfile={key}"])
        shutil.chown(m, "munge", "munge")
        shutil.chown(key, "munge", "munge")
        os.chmod(key, 0o400)
        os.chmod(m, 0o755)
        self.munge_socket = m / "munge.socket"
        self._run(["munged", f"--socket={self.munge_socket}", f"--key-file={key}",
                   f"--pid-file={m / 'munged.pid'}", f"--log-file={m / 'munged.log'}",
                   f"--seed-file={m / 'munged.seed'}"], daemon=True, user="munge", group="munge")
        self._wait(lambda: subprocess.run(
            f"munge -S {self.munge_socket} -n | unmunge -S {self.munge_socket}", shell=True,
            capture_output=True).returncode == 0, 10, "munge credential round trip failed",
            ["../munge/munged.log"])

    def _start_mariadb(self) -> None:
        d = self.root / "mysql"
        shutil.chown(d, "mysql", "mysql")
        self._run(["mariadb-install-db", "--user=mysql", f"--datadir={d / 'data'}",
                   "--auth-root-authentication-method=socket", "--skip-test-db"])
        sock = d / "mysqld.sock"
        log = open(d / "stdout.log", "ab")
        subprocess.Popen(
            [_which("mariadbd") or "mariadbd", "--no-defaults", "--user=mysql", f"--datadir={d / 'data'}",
             f"--socket={sock}", f"--pid-file={d / 'mariadbd.pid'}", "--bind-address=127.0.0.1",
             f"--port={self.ports['mysql']}", f"--log-error={d / 'err.log'}",
             "--innodb-buffer-pool-size=64M", "--innodb-lock-wait-timeout=900"],
            env=self._daemon_env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True)
        log.close()
        self._wait(sock.exists, 60, "mariadbd socket never appeared", ["../mysql/err.log"])
        sql = ("CREATE DATABASE IF NOT EXISTS slurm_acct_db; "
               "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmpw'; "
               "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;")
        self._wait(lambda: subprocess.run(["mariadb", "-S", str(sock), "-u", "root", "-e", sql],
                                          capture_output=True).returncode == 0,
                   30, "could not create the accounting database", ["../mysql/err.log"])

    def _start_slurmdbd(self) -> None:
        dbd = self.root / "slurmdbd.conf"  # slurmdbd reads it from dirname($SLURM_CONF)
        dbd.write_text(f"""AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
DbdHost=localhost
DbdPort={self.ports['slurmdbd']}
SlurmUser=root
LogFile={self.root / 'log' / 'slurmdbd.log'}
PidFile={self.root / 'slurmdbd.pid'}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.ports['mysql']}
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
""")
        os.chmod(dbd, 0o600)
        self._run(["slurmdbd"], daemon=True)
        self._wait(lambda: subprocess.run(["sacctmgr", "-n", "show", "cluster"], env=self.env,
                                          capture_output=True).returncode == 0,
                   30, "slurmdbd never answered", ["slurmdbd.log"])
        self._run(["sacctmgr", "-i", "add", "cluster", CLUSTER_NAME])

    def _write_slurm_conf(self) -> None:
        r = self.root
        mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        acct = (f"AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\n"
                f"AccountingStoragePort={self.ports['slurmdbd']}\nJobAcctGatherType=jobacct_gather/linux\n"
                # for slurmdbd connections the munge socket is given here, not by AuthInfo
                f"AccountingStoragePass={self.munge_socket}\n"
                if self.accounting else
                "AccountingStorageType=accounting_storage/none\nJobAcctGatherType=jobacct_gather/none\n")
        self.conf.write_text(f"""ClusterName={CLUSTER_NAME}
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket},cred_expire={self.cred_expire_s}
CryptoType=crypto/munge
SlurmctldPort={self.ports['slurmctld']}
SlurmdPort={self.ports['slurmd']}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
MinJobAge=300
JobRequeue=1
JobCompType=jobcomp/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={max(mem_mb - 1024, 512)} State=UNKNOWN
PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
{acct}""")

    # ---------------------------------------------------------------- queries
    def _sinfo_state(self) -> str:
        res = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True)
        return res.stdout.strip().rstrip("*~#") if res.returncode == 0 else ""

    def squeue_ids(self) -> list[str]:
        res = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True)
        return res.stdout.split() if res.returncode == 0 else []

    def job_state(self, job_id: str) -> str:
        """The job's state from the controller (``squeue``), else from accounting (``sacct``)."""
        res = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], env=self.env,
                             capture_output=True, text=True)
        if res.returncode == 0 and res.stdout.strip():
            return res.stdout.split()[0]
        res = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], env=self.env,
                             capture_output=True, text=True)
        lines = res.stdout.split()
        return lines[-1].split()[0] if lines else "UNKNOWN"

    def wait_for_state(self, job_id: str, states: set[str], timeout_s: float) -> str:
        """Poll until the job reaches one of ``states``; raises TimeoutError with the last one."""
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state in states:
                return state
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} still {state!r} after {timeout_s:.0f} s "
                           f"(waited for {sorted(states)})\n{self.log_tails()}")

    def log_tails(self, lines: int = 15) -> str:
        return "\n".join(f"--- {name}\n{_tail(self.root / 'log' / name, lines)}"
                         for name in ("slurmctld.log", "slurmd.log", "slurmdbd.log"))

    def _wait(self, ok, timeout_s: float, message: str | None, logs: list[str] | None = None) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ok():
                return True
            time.sleep(0.2)
        if message is None:
            return False
        tails = "\n".join(f"--- {n}\n{_tail(self.root / 'log' / n)}" for n in logs or [])
        raise ClusterStartError(f"{message} after {timeout_s} s\n{tails}")


if __name__ == "__main__":  # pragma: no cover - manual use, see docs/slurm.md
    reason = unavailable_reason()
    if reason:
        raise SystemExit(reason)
    def _stop(signum, frame):
        raise SystemExit(0)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # background shells ignore SIGINT
        signal.signal(sig, _stop)
    with SlurmCluster() as cluster:
        print(f"export SLURM_CONF={cluster.conf}   # Ctrl-C or kill {os.getpid()} stops the cluster",
              flush=True)
        while True:
            signal.pause()
