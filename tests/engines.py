"""Real engines for the tests, private to one test module: a one-node Slurm cluster (slurmctld,
slurmd and munged with their own config, key, socket, ports and state under a temporary
directory), a two-node Ray cluster and an MLflow tracking server, all on 127.0.0.1.

Nothing here writes /etc or touches a Slurm, Ray or MLflow already running: every daemon gets
its paths and ports from its command line or its environment (SLURM_CONF, HOME, RAY_TMPDIR).
Every directory is named `nb-engines-*`; `stop()` ends the daemons, then kills any process still
holding that directory (cwd, an open file or its command line: job steps, Ray workers), and
`scripts/kill_engines.py` does the same for every `nb-engines-*` at the end of CI. Each daemon's
pid is noted in STARTED, which the suite checks is empty of live processes when it ends.

Waits poll the daemon's own state (sinfo, a TCP port, an HTTP answer), never a fixed sleep.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PREFIX = "nb-engines-"
STARTED: list[tuple[str, int]] = []  # (what, pid) of every daemon the tests started

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from kill_engines import kill_holding  # noqa: E402  (the sweeper CI runs too)


class EngineUnavailable(Exception):
    """The engine is not installed here (skip), or it would not start (fail under CI)."""


def started(daemons: Daemons, what: str) -> Daemons:
    """`daemons.up()` for a module's fixture: a test that cannot have the engine skips, except
    under CI, where .ci/run installs every engine and one that does not start fails."""
    import pytest

    try:
        return daemons.up()
    except (EngineUnavailable, TimeoutError) as exc:
        daemons.stop()
        if os.environ.get("CI"):
            pytest.fail(f"{what} did not start: {exc}")
        pytest.skip(f"{what} did not start: {exc}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout: float, every: float = 0.2):
    """Poll `check()` until it returns something true; that value, or TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s")
        time.sleep(every)


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


class Daemons:
    """Processes started in their own sessions under one `nb-engines-*` directory."""

    def __init__(self, name: str):
        self.root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{name}-"))
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, what: str, argv: list[str], env: dict | None = None,
              log: str | None = None) -> subprocess.Popen:
        out = open(self.root / (log or f"{what}.out"), "ab")
        try:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, cwd=self.root,
                                    start_new_session=True)
        finally:
            out.close()
        self.procs.append((what, proc))
        STARTED.append((what, proc.pid))
        return proc

    def log(self, what: str) -> str:
        path = self.root / f"{what}.out"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop_one(self, proc: subprocess.Popen, grace: float = 10.0) -> None:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(10)

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            self.stop_one(proc)
        kill_holding(str(self.root))
        shutil.rmtree(self.root, ignore_errors=True)


# --- Slurm --------------------------------------------------------------------------------

NODE = "nbnode"

SLURM_CONF = """\
ClusterName=nbtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SrunPortRange={srun_lo}-{srun_hi}
AuthType=auth/munge
AuthInfo=socket={root}/munge/socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
PlugStackConfig={root}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=1
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=600
KillWait=5
NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def slurm_available() -> str | None:
    """Why the private cluster cannot start here (None: it can)."""
    missing = [p for p in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol",
                           "scancel") if shutil.which(p) is None and
               not Path(f"/usr/sbin/{p}").exists()]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing: apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the private Slurm cluster runs its daemons as root"
    return None


def _sbin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class SlurmCluster(Daemons):
    """One node (`nbnode`, all of this machine's CPUs), one partition (`debug`), no accounting."""

    def __init__(self):
        super().__init__("slurm")
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        for var in [v for v in self.env if v.startswith(("SLURM_", "SBATCH_", "SQUEUE_"))]:
            if var != "SLURM_CONF":
                del self.env[var]

    def up(self) -> SlurmCluster:
        root = self.root
        for sub in ("munge", "state", "spool"):
            (root / sub).mkdir(mode=0o700)
        os.chmod(root, 0o755)  # munged wants the socket's directories searchable by all
        key = root / "munge" / "key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        (root / "plugstack.conf").write_text("")
        ports = [free_port() for _ in range(2)]
        srun = free_port()
        mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
        self.conf.write_text(SLURM_CONF.format(
            root=root, ctld_port=ports[0], slurmd_port=ports[1], srun_lo=srun, srun_hi=srun + 20,
            node=NODE, host=socket.gethostname().split(".")[0], cpus=os.cpu_count(),
            mem_mb=mem_mb))
        munge = self.start("munged", [_sbin("munged"), "--foreground", "--force",
                                      f"--socket={root}/munge/socket", f"--key-file={key}",
                                      f"--pid-file={root}/munge/pid",
                                      f"--log-file={root}/munge/log",
                                      f"--seed-file={root}/munge/seed"], self.env)
        wait_for("munged", lambda: (root / "munge" / "socket").exists() or munge.poll() is not None, 15)
        if munge.poll() is not None:
            raise EngineUnavailable(f"munged exited: {self.log('munged')}")
        ctld = self.start("slurmctld", [_sbin("slurmctld"), "-D", "-i", "-f", str(self.conf)], self.env)
        wait_for("slurmctld", lambda: port_open(ports[0]) or ctld.poll() is not None, 30)
        slurmd = self.start("slurmd", [_sbin("slurmd"), "-D", "-f", str(self.conf), "-N", NODE],
                            self.env)
        try:
            wait_for("the node to be idle", lambda: self.node_state() == "idle"
                     or slurmd.poll() is not None or ctld.poll() is not None, 60)
        except TimeoutError:
            raise EngineUnavailable(f"the Slurm node did not come up: {self.node_state()}; "
                                    f"{self.tail('slurmctld.log')} {self.tail('slurmd.log')}") from None
        if slurmd.poll() is not None or ctld.poll() is not None:
            raise EngineUnavailable(f"a Slurm daemon exited: {self.tail('slurmctld.log')} "
                                    f"{self.tail('slurmd.log')} {self.log('slurmd')}")
        return self

    def tail(self, name: str) -> str:
        path = self.root / name
        return path.read_text(errors="replace")[-1500:] if path.exists() else ""

    def run(self, *argv: str, check: bool = True) -> str:
        done = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
        return done.stdout

    def node_state(self) -> str:
        try:
            return self.run("sinfo", "--noheader", "--nodes", NODE, "--format=%T", check=False).strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    def jobs(self, states: str = "PENDING,RUNNING,CONFIGURING,COMPLETING") -> dict[str, tuple[str, str]]:
        """{job id: (state, reason)} of the jobs in the given states."""
        out = self.run("squeue", "--noheader", f"--states={states}", "--format=%i|%T|%r",
                       check=False)
        return {line.split("|")[0]: tuple(line.split("|")[1:3])
                for line in out.splitlines() if line.count("|") == 2}

    def set_node(self, state: str) -> None:
        self.run("scontrol", "update", f"nodename={NODE}", f"state={state}",
                 *(["reason=normbench test"] if state in ("down", "drain") else []))

    def reset(self) -> None:
        """Between tests: no job left, the node idle again."""
        self.run("scancel", "--full", "--user", "root", check=False)
        wait_for("the queue to empty", lambda: not self.jobs(), 60)
        state = self.node_state()
        if state not in ("idle", "mixed", "allocated"):
            self.set_node("resume" if "drain" in state or "down" in state else "idle")
        wait_for("the node to be idle", lambda: self.node_state() == "idle", 60)

    def stop(self) -> None:
        try:
            self.run("scancel", "--full", "--user", "root", check=False)
            wait_for("the queue to empty", lambda: not self.jobs(), 30)
        except Exception:  # noqa: BLE001 - the daemons go down regardless
            pass
        super().stop()


# --- Ray ----------------------------------------------------------------------------------

class RayCluster(Daemons):
    """A head node and a second node on 127.0.0.1, one CPU each, token authentication on; HOME
    (and so ~/.ray/auth_token) and Ray's temp directory under the cluster's directory."""

    def __init__(self):
        super().__init__("ray")
        self.home = self.root / "home"
        self.home.mkdir()
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        ray = Path(sys.executable).with_name("ray")
        self.ray = str(ray if ray.exists() else shutil.which("ray") or "ray")
        self.env = {**os.environ, "HOME": str(self.home), "RAY_TMPDIR": str(self.root / "tmp"),
                    "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
        for var in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
            self.env.pop(var, None)
        (self.root / "tmp").mkdir()
        self.worker: subprocess.Popen | None = None

    def _start_node(self, what: str, head: bool) -> subprocess.Popen:
        argv = [self.ray, "start", "--block", "--num-cpus", "1", "--disable-usage-stats",
                "--node-ip-address", "127.0.0.1"]
        if head:
            argv += ["--head", "--port", str(self.port), "--include-dashboard", "false",
                     "--temp-dir", str(self.root / "tmp")]
        else:
            argv += ["--address", self.address]
        return self.start(what, argv, self.env)

    def up(self) -> RayCluster:
        subprocess.run([self.ray, "get-auth-token", "--generate"], env=self.env,
                       capture_output=True, timeout=60)
        if not (self.home / ".ray" / "auth_token").exists():
            raise EngineUnavailable("ray get-auth-token --generate wrote no token")
        head = self._start_node("ray-head", head=True)
        wait_for("the Ray head", lambda: port_open(self.port) or head.poll() is not None, 90)
        if head.poll() is not None:
            raise EngineUnavailable(f"ray start --head exited: {self.log('ray-head')}")
        self.worker = self._start_node("ray-worker", head=False)
        wait_for("two Ray nodes", lambda: self.nodes() >= 2 or self.worker.poll() is not None, 90)
        if self.worker.poll() is not None:
            raise EngineUnavailable(f"the second Ray node exited: {self.log('ray-worker')}")
        return self

    def nodes(self) -> int:
        """How many nodes the cluster counts alive (asked through `ray status`)."""
        done = subprocess.run([self.ray, "status", "--address", self.address], env=self.env,
                              capture_output=True, text=True, timeout=60)
        text = done.stdout.split("Pending:")[0]
        return text.count(" node_") if done.returncode == 0 else 0

    def stop_worker(self) -> None:
        """The second node goes away as a machine would: its raylet and workers killed."""
        if self.worker is not None and self.worker.poll() is None:
            os.killpg(self.worker.pid, signal.SIGKILL)
            self.worker.wait(30)


# --- MLflow -------------------------------------------------------------------------------

class MlflowServer(Daemons):
    """`mlflow server` on 127.0.0.1 with a SQLite backend; stop() and start() keep its store."""

    def __init__(self):
        super().__init__("mlflow")
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        mlflow = Path(sys.executable).with_name("mlflow")
        self.mlflow = str(mlflow if mlflow.exists() else shutil.which("mlflow") or "mlflow")
        self.proc: subprocess.Popen | None = None

    def up(self) -> MlflowServer:
        self.proc = self.start("mlflow", [
            self.mlflow, "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{self.root / 'store.db'}",
            "--default-artifact-root", str(self.root / "artifacts"), "--workers", "1"],
            {**os.environ, "MLFLOW_TRACKING_URI": ""})
        wait_for("the MLflow server", lambda: self.healthy() or self.proc.poll() is not None, 120)
        if self.proc.poll() is not None:
            raise EngineUnavailable(f"mlflow server exited: {self.log('mlflow')}")
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def down(self) -> None:
        if self.proc is not None:
            self.stop_one(self.proc)
            wait_for("the MLflow port to close", lambda: not port_open(self.port), 30)

    def pause(self) -> None:
        """The server stops answering (SIGSTOP): a slow or hung server, its port still open."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)
