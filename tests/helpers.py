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


def _assert_same_state(a, b, where: str = "") -> None:
    """Nested dicts / lists of tensors, arrays and numbers are identical (bit for bit)."""
    import numpy as np
    import torch

    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same_state(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    else:
        assert a == b, where


def assert_same_run(run_parent_a: str, run_parent_b: str) -> dict:
    """The single runs under the two folders ended in the same state: their checkpoint.pt files hold identical
    networks, optimisers, counters, replay buffers and RNG streams, and they logged the same evaluation returns.
    Returns the first checkpoint."""
    import torch

    (a,), (b,) = (glob.glob(os.path.join(p, "*", "checkpoint.pt")) for p in (run_parent_a, run_parent_b))
    a, b = torch.load(a, weights_only=False), torch.load(b, weights_only=False)
    for part in ("counters", "modules", "optimizers", "buffer", "rng"):
        _assert_same_state(a[part], b[part], part)
    returns_a, returns_b = (read_scalars(p)["eval/episodic_return"] for p in (run_parent_a, run_parent_b))
    assert returns_a == returns_b
    return a
