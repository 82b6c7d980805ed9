"""Helpers shared by the test files: run a script as a user would and read its TensorBoard scalars."""

import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def script_env() -> dict:
    """The environment for a script under test: one thread, quiet warnings, tests/ importable (odd_envs)."""
    path = os.pathsep.join([os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", PYTHONPATH=path)


def run_script(script: str, *cli: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python <script> <cli>` from the current directory; returns the finished process (text output)."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *cli], capture_output=True, text=True,
                          timeout=timeout, env=script_env())  # fmt: skip


def read_scalars(run_parent: str) -> dict:
    """{tag: [(step, value), ...]} from the single run directory under `run_parent`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run_dir,) = glob.glob(os.path.join(run_parent, "*"))
    acc = EventAccumulator(run_dir)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_one_sentence_error(proc: subprocess.CompletedProcess, message: str) -> None:
    """A non-zero exit whose stderr has exactly one `error: ...` line containing `message`, and no traceback."""
    assert proc.returncode != 0
    err_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(err_lines) == 1 and message in err_lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
