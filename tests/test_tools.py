"""runs.sh (dry run, command expansion, Slurm script), the figure script and the saved-model evaluator."""

import glob
import os
import shlex
import subprocess
import sys

import tyro
from helpers import ROOT, run_script

import nc_lql
import som

RUNS = os.path.join(ROOT, "runs.sh")


def _dry(*extra):
    proc = subprocess.run(["bash", RUNS, *extra, "--dry-run"], capture_output=True, text=True, check=True)
    return proc.stdout.strip().splitlines()


def test_dry_run_prints_the_full_protocol_and_every_command_parses():
    lines = _dry()
    assert len(lines) == 5 * 5 + 6 * 5  # SOM: 5 envs, NC-LQL: 6 envs, 5 seeds each
    som_lines = [x for x in lines if " som.py " in x]
    assert len(som_lines) == 25 and sum("Swimmer-v4" in x for x in som_lines) == 0
    assert sum("Swimmer-v4" in x for x in lines) == 5
    for line in lines:
        argv = shlex.split(line)
        script, cli = argv[1], argv[2:]
        args = tyro.cli(som.Args if script == "som.py" else nc_lql.Args, args=cli)
        assert args.total_timesteps == 5_000_000 and args.num_envs == 5  # the protocol's defaults
    assert {shlex.split(x)[shlex.split(x).index("--seed") + 1] for x in lines} == {"1", "2", "3", "4", "5"}


def test_quick_set_and_only_filter():
    quick = _dry("quick", "--only", "som")
    assert len(quick) == 3 * 5 and all(" som.py " in x and "--num-envs 1" in x for x in quick)
    fits = set()
    for line in quick:
        args = tyro.cli(som.Args, args=shlex.split(line)[2:])
        fits.add((args.env_id, args.actor_points, args.distill_rows, args.compile))
    # Pendulum and the first Hopper run with the first default's actor fit, the Hopper check with today's default
    assert fits == {("Pendulum-v1", "replay", 0, False), ("Hopper-v4", "replay", 0, False),
                    ("Hopper-v4", "boltzmann", 64, True)}  # fmt: skip


def test_release_set_is_the_readme_side_by_side_runs():
    lines = _dry("release")
    assert [shlex.split(x)[1] for x in lines] == ["nc_lql.py", "som.py", "som.py", "nc_lql.py"]
    runs = []
    for line in lines:
        argv = shlex.split(line)
        args = tyro.cli(som.Args if argv[1] == "som.py" else nc_lql.Args, args=argv[2:])
        runs.append((argv[1], args.seed, args.total_timesteps, args.checkpoint_buffer))
        assert (args.env_id, args.num_envs, args.learning_starts) == ("Hopper-v4", 5, 30_000)
        assert (args.eval_frequency, args.eval_episodes, args.compile) == (7500, 20, True)
    assert runs == [("nc_lql.py", 100, 90_000, False), ("som.py", 100, 90_000, True), ("som.py", 100, 90_000, False),
                    ("nc_lql.py", 101, 150_000, True)]  # fmt: skip
    assert len(_dry("release", "--only", "som")) == 2


def test_long_and_probe_sets_parse():
    long = _dry("long")
    assert len(long) == 4 and {shlex.split(x)[1] for x in long} == {"som.py", "nc_lql.py"}
    for line in long:
        argv = shlex.split(line)
        args = tyro.cli(som.Args if argv[1] == "som.py" else nc_lql.Args, args=argv[2:])
        assert args.env_id in ("HalfCheetah-v4", "Hopper-v4") and args.checkpoint_buffer and args.compile
    probe = _dry("probe")
    fields = set(som.Args.__dataclass_fields__)
    for line in probe:
        argv = shlex.split(line)
        if argv[1] == "scripts/bandit_actor_probe.py":  # every --set / --sweep name is a som.Args field
            names = [a.split("=")[0] for a in argv[argv.index("--set") + 1 :] if "=" in a] if "--set" in argv else []
            names += [argv[argv.index("--sweep") + 1].split("=")[0]] if "--sweep" in argv else []
            assert names and set(names) <= fields, line
        else:
            tyro.cli(som.Args if argv[1] == "som.py" else nc_lql.Args, args=argv[2:])


def test_slurm_writes_one_array_task_per_command(tmp_path):
    proc = subprocess.run(["bash", RUNS, "--slurm"], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert f"sbatch {tmp_path / 'runs_slurm.sbatch'}" in proc.stdout
    text = (tmp_path / "runs_slurm.sbatch").read_text()
    assert "#SBATCH --array=0-54" in text and text.count("--cuda") == 55


def test_unknown_argument_is_refused():
    proc = subprocess.run(["bash", RUNS, "--bogus"], capture_output=True, text=True)
    assert proc.returncode != 0 and "unknown argument" in proc.stderr


def test_evaluate_saved_model_and_curve_figure(tmp_path):
    runs = str(tmp_path / "runs")
    proc = run_script("som.py", "--env-id", "Pendulum-v1", "--num-envs", "2", "--total-timesteps", "240",
                      "--learning-starts", "120", "--batch-size", "32", "--num-mc-samples", "4", "--num-candidates",
                      "4", "--eval-frequency", "120", "--eval-episodes", "2", "--hidden-dim", "32", "--save-model",
                      "--run-dir", runs)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (model,) = glob.glob(os.path.join(runs, "*", "som.pt"))
    ev = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"), model, "--episodes", "2",
                         "--num-candidates", "1"], capture_output=True, text=True)  # fmt: skip
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert "Pendulum-v1: return" in ev.stdout and "over 2 episodes" in ev.stdout
    out = str(tmp_path / "curves.png")
    fig = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "figures.py"), "curves", runs, "--out", out],
                         capture_output=True, text=True)  # fmt: skip
    assert fig.returncode == 0, fig.stderr[-2000:]
    assert os.path.getsize(out) > 10_000
