"""runs.sh --slurm on a real one-node Slurm cluster (munge, slurmctld and slurmd on this machine, started and stopped
here; .ci/run installs Debian's slurm-wlm and munge): every task of the smoke set runs, and a task that reaches its
time limit gets the early warning, checkpoints, and, submitted again, finishes from its checkpoint with the
evaluations of an uninterrupted run. Elsewhere it skips with its reason."""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers import ROOT, read_scalars, script_env

DAEMONS = ["munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue"]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(any(shutil.which(d) is None for d in DAEMONS), reason="Slurm or munge is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a local Slurm cluster needs root"),
]
STEPS = 1500  # SOM's bandit run at its default sizes: minutes on one core, so the time limit falls mid-run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A one-node cluster on 127.0.0.1; yields the environment its clients need; stops every daemon it started."""
    d = tmp_path_factory.mktemp("slurm")
    os.chmod(d, 0o700)
    for sub in ("state", "spool"):
        (d / sub).mkdir()
    host = socket.gethostname()
    conf = d / "slurm.conf"
    conf.write_text(f"""ClusterName=test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge.socket
CredType=cred/munge
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
KillWait=10
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory=2000 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    env = {**script_env(), "SLURM_CONF": str(conf)}
    subprocess.run(["mungekey", "-c", "-k", str(d / "munge.key")], check=True, capture_output=True)
    munge = [f"--socket={d}/munge.socket", f"--key-file={d}/munge.key", f"--log-file={d}/munged.log",
             f"--pid-file={d}/munged.pid", f"--seed-file={d}/munged.seed"]  # fmt: skip
    try:
        subprocess.run(["munged", "-f", *munge], check=True, capture_output=True)
        subprocess.run(["slurmctld", "-f", str(conf)], check=True, capture_output=True, env=env)
        subprocess.run(["slurmd", "-f", str(conf)], check=True, capture_output=True, env=env)
        for _ in range(60):
            sinfo = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env).stdout
            if sinfo.strip() == "idle":
                break
            time.sleep(1)
        else:
            pytest.fail(f"the test cluster's node did not come up: {sinfo!r}")
        yield env
    finally:
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = d / f"{name}.pid"
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text()), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(2)


def submit(env, script, *options) -> str:
    out = subprocess.run(["sbatch", "--parsable", *options, str(script)], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def wait_for(env, job_ids, timeout=1800):
    for _ in range(timeout // 5):
        queued = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)], capture_output=True,
                                text=True, env=env).stdout.split()  # fmt: skip
        if not queued:
            return
        time.sleep(5)
    pytest.fail(f"jobs {job_ids} still queued after {timeout} s")


def last_step(task_dir) -> int:
    """The last step of the newest run folder of a task (its run_info.jsonl's last line)."""
    (info,) = sorted(glob.glob(os.path.join(task_dir, "*", "run_info.jsonl")))[-1:]
    return json.loads(open(info).read().splitlines()[-1])["step"]


def test_every_task_runs_and_one_past_its_time_limit_finishes_from_its_checkpoint(cluster, tmp_path):
    runs = tmp_path / "runs"
    env = {**cluster, "RUNS_GPUS": "0", "RUNS_CPUS": "1", "RUNS_TIME": "20", "RUNS_DIR": str(runs),
           "SMOKE_STEPS": str(STEPS), "PYTHON": "python"}  # fmt: skip
    subprocess.run(["bash", os.path.join(ROOT, "runs.sh"), "smoke", "--slurm"], cwd=tmp_path, env=env, check=True,
                   capture_output=True)  # fmt: skip
    script = tmp_path / "runs_slurm.sbatch"
    text = script.read_text()
    assert "#SBATCH --signal=B:TERM@120" in text and "#SBATCH --requeue" in text and "--gres" not in text
    assert "--cuda" not in text  # the scripts take the GPU when there is one; the SAC baseline has no such flag
    # SOM (task 0) with a 2-minute limit and the warning 60 s ahead; NC-LQL and SAC (tasks 1, 2) as written
    first = submit(cluster, script, "--array=0", "--time=2", "--signal=B:TERM@60", f"--output={tmp_path}/som-1.out")
    others = submit(cluster, script, "--array=1-2", f"--output={tmp_path}/task-%a.out")
    (command,) = [line.strip() for line in text.splitlines() if "som.py" in line]
    reference = tmp_path / "reference"  # the same command, uninterrupted, outside Slurm, meanwhile
    argv = command.replace("\\ ", " ").split()[2:]
    ref_log = open(tmp_path / "reference.log", "w")
    ref = subprocess.Popen([sys.executable, os.path.join(ROOT, "som.py"), *argv, "--run-dir", str(reference)],
                           stdout=ref_log, stderr=subprocess.STDOUT, env=script_env())  # fmt: skip
    wait_for(cluster, [first])
    log = (tmp_path / "som-1.out").read_text()
    assert "SIGTERM received: stopped at step" in log, log[-2000:]
    stopped = last_step(runs / "slurm_smoke" / "task_0")
    assert 0 < stopped < STEPS, f"the time limit fell at step {stopped} of {STEPS}: not mid-run"
    (info,) = glob.glob(str(runs / "slurm_smoke" / "task_0" / "*" / "run_info.jsonl"))
    start, end = (json.loads(line)["time"] for line in open(info).read().splitlines()[:2])
    assert end - start < 100, f"stopped {end - start:.0f} s into its 120: by the limit, not by the early warning"
    again = submit(cluster, script, "--array=0", f"--output={tmp_path}/som-2.out")
    wait_for(cluster, [again, others])
    assert ref.wait(timeout=1800) == 0, (tmp_path / "reference.log").read_text()[-2000:]
    assert f"resumed from {runs}/slurm_smoke/task_0/" in (tmp_path / "som-2.out").read_text()
    for task in range(3):
        assert last_step(runs / "slurm_smoke" / f"task_{task}") == STEPS, tmp_path / f"task-{task}.out"
    resumed, uninterrupted = read_scalars(str(runs / "slurm_smoke" / "task_0")), read_scalars(str(reference))
    for tag in ("eval/episodic_return", "eval/episodic_return_n1", "eval/episodic_return_zero_noise"):
        assert resumed[tag] == uninterrupted[tag] and resumed[tag][-1][0] == STEPS, tag
