"""runs.sh (dry run, command expansion, Slurm script), the figure script and the saved-model evaluator."""

import glob
import json
import os
import shlex
import subprocess
import sys

import pytest
import torch
import tyro
from helpers import ROOT, assert_one_sentence_error, read_scalars, run_script, script_env

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
    assert len(quick) == 2 * 5 and all(" som.py " in x and "--num-envs 1" in x for x in quick)
    runs = {(a.env_id, a.num_collect_candidates) for a in (tyro.cli(som.Args, args=shlex.split(x)[2:]) for x in quick)}
    assert runs == {("Pendulum-v1", 32), ("Hopper-v4", 32)}  # as recorded: data collected with best-of-32


def test_recorded_som_runs_collect_data_as_they_were_run():
    """The runs of docs/ collected data with the acting N (best of --num-candidates): each of their lines says so,
    except the runs that collected with N = 1 by name (and the long set, at the defaults)."""
    for run_set in ("quick", "release", "probe", "vs_sac"):
        for line in _dry(run_set, "--only", "som"):
            argv = shlex.split(line)
            if argv[1] != "som.py":
                continue
            args = tyro.cli(som.Args, args=argv[2:])
            expected = 1 if "collect1" in args.exp_name else args.num_candidates
            assert args.num_collect_candidates == expected, line


def test_release_set_is_the_readme_side_by_side_runs():
    lines = _dry("release")
    assert [shlex.split(x)[1] for x in lines] == ["nc_lql.py", "som.py", "nc_lql.py"]
    runs = []
    for line in lines:
        argv = shlex.split(line)
        args = tyro.cli(som.Args if argv[1] == "som.py" else nc_lql.Args, args=argv[2:])
        runs.append((argv[1], args.seed, args.total_timesteps, args.checkpoint_buffer))
        assert (args.env_id, args.num_envs, args.learning_starts) == ("Hopper-v4", 5, 30_000)
        assert (args.eval_frequency, args.eval_episodes, args.compile) == (7500, 20, True)
    assert runs == [
        ("nc_lql.py", 100, 90_000, False),
        ("som.py", 100, 90_000, False),
        ("nc_lql.py", 101, 150_000, True),
    ]
    assert len(_dry("release", "--only", "som")) == 1


def test_long_and_probe_sets_parse():
    long = _dry("long")
    assert len(long) == 4 and {shlex.split(x)[1] for x in long} == {"som.py", "nc_lql.py"}
    for line in long:
        argv = shlex.split(line)
        args = tyro.cli(som.Args if argv[1] == "som.py" else nc_lql.Args, args=argv[2:])
        assert args.env_id in ("HalfCheetah-v4", "Hopper-v4") and args.checkpoint_buffer and args.compile
        assert args.num_envs == 5 and args.learning_starts == 30_000  # the protocol's defaults
    probe = _dry("probe")
    fields = set(som.Args.__dataclass_fields__)
    for line in probe:
        argv = shlex.split(line)
        if argv[1] == "scripts/bandit_actor_probe.py":  # every --set / --sweep name is a som.Args field
            names = [a.split("=")[0] for a in argv[argv.index("--set") + 1 :] if "=" in a] if "--set" in argv else []
            names += [argv[argv.index("--sweep") + 1].split("=")[0]] if "--sweep" in argv else []
            assert set(names) <= fields, line
        else:
            tyro.cli(som.Args if argv[1] == "som.py" else nc_lql.Args, args=argv[2:])


def test_vs_sac_set_is_som_nc_lql_and_sac_on_two_tasks_and_two_seeds():
    lines = _dry("vs_sac")
    assert len(lines) == 2 * 2 * 4
    runs = set()
    for line in lines:
        argv = shlex.split(line)
        if argv[1] == "scripts/sac_baseline.py":
            from scripts.sac_baseline import Args as SacArgs

            args = tyro.cli(SacArgs, args=argv[2:])
            assert (args.learning_starts, args.batch_size, args.learning_rate) == (5000, 256, 3e-4)
            assert (args.eval_frequency, args.eval_episodes) == (2500, 5)
        else:
            args = tyro.cli(som.Args if argv[1] == "som.py" else nc_lql.Args, args=argv[2:])
            assert (args.num_envs, args.learning_starts, args.batch_size, args.critic_lr) == (1, 5000, 256, 3e-4)
            assert (args.eval_frequency, args.eval_episodes, args.checkpoint_buffer) == (2500, 5, True)
        assert args.total_timesteps == 30_000
        collect = args.num_collect_candidates if argv[1] == "som.py" else None
        runs.add((argv[1], args.env_id, args.seed, collect))
    assert (
        len(runs) == 16 and {r[1] for r in runs} == {"HalfCheetah-v4", "Hopper-v4"} and {r[2] for r in runs} == {1, 2}
    )
    assert {r[3] for r in runs if r[0] == "som.py"} == {32, 1}


def test_slurm_writes_one_array_task_per_command(tmp_path):
    proc = subprocess.run(["bash", RUNS, "--slurm"], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert f"sbatch {tmp_path / 'runs_slurm.sbatch'}" in proc.stdout
    text = (tmp_path / "runs_slurm.sbatch").read_text()
    assert "#SBATCH --array=0-54" in text and "--cuda" not in text  # the scripts take the GPU when there is one
    assert "#SBATCH --signal=B:TERM@120" in text and "#SBATCH --requeue" in text and "#SBATCH --gres=gpu:1" in text
    assert 'eval "exec ${JOBS[$SLURM_ARRAY_TASK_ID]} --run-dir $TASK_DIR ${CHECKPOINT:+--resume $CHECKPOINT}"' in text
    subprocess.run(["bash", RUNS, "--slurm"], check=True, capture_output=True, cwd=tmp_path,
                   env={**os.environ, "RUNS_GPUS": "0", "RUNS_TIME": "2:00:00", "RUNS_PARTITION": "gpu"})  # fmt: skip
    text = (tmp_path / "runs_slurm.sbatch").read_text()
    assert "--gres" not in text and "#SBATCH --time=2:00:00" in text and "#SBATCH --partition=gpu" in text


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--bogus"], "unknown argument '--bogus'"),
        (["--only", "foo", "--dry-run"], "--only takes som or nc_lql, got 'foo'"),
        (["--dry-run", "--only"], "--only takes som or nc_lql, got ''"),
        (["--only", "foo", "--slurm"], "--only takes som or nc_lql, got 'foo'"),
    ],
)
def test_bad_runs_sh_arguments_are_one_line_and_exit_2(argv, message, tmp_path):
    proc = subprocess.run(["bash", RUNS, *argv], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert message in proc.stderr and not (tmp_path / "runs_slurm.sbatch").exists()


def test_speed_vs_times_two_checkouts_side_by_side_and_refuses_a_folder_that_is_not_one(tmp_path):
    """Eager, one round, this checkout against itself: a table row with both times and their ratio."""
    proc = run_script("scripts/speed_vs.py", ROOT, "--what", "nc_lql_update", "--rounds", "1", "--eager")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = [line for line in proc.stdout.splitlines() if line.startswith("| NC-LQL full update |")]
    this, other, ratio = (float(x) for x in row.strip("| \n").split("|")[1:])
    assert this > 0 and other > 0 and ratio == pytest.approx(this / other, abs=2e-3)
    assert_one_sentence_error(run_script("scripts/speed_vs.py", str(tmp_path)), "is not a checkout of this project")


def evaluate(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"), *argv], capture_output=True,
                          text=True)  # fmt: skip


def test_evaluate_refuses_foreign_files_and_som_options_for_an_nc_lql_model(tmp_path):
    (tmp_path / "corrupt.pt").write_bytes(b"not a torch file")
    assert_one_sentence_error(evaluate(str(tmp_path / "corrupt.pt")), "is not a saved model or checkpoint")
    torch.save({"weights": torch.zeros(3)}, str(tmp_path / "other.pt"))
    assert_one_sentence_error(evaluate(str(tmp_path / "other.pt")), "is not a saved model or checkpoint of som.py")
    runs = str(tmp_path / "runs")
    proc = run_script("nc_lql.py", "--env-id", "Pendulum-v1", "--num-envs", "2", "--total-timesteps", "60",
                      "--learning-starts", "40", "--batch-size", "16", "--eval-frequency", "60", "--eval-episodes", "1",
                      "--hidden-dim", "16", "--num-levels", "2", "--save-model", "--run-dir", runs)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (model,) = glob.glob(os.path.join(runs, "*", "nc_lql.pt"))
    for option in (["--num-candidates", "4"], ["--flow-steps", "2"]):
        assert_one_sentence_error(evaluate(model, *option), f"{option[0]} applies to SOM models only")
    assert evaluate(model, "--episodes", "1").returncode == 0


def test_evaluate_saved_model_and_curve_figure(tmp_path):
    runs = str(tmp_path / "runs")
    proc = run_script("som.py", "--env-id", "Pendulum-v1", "--num-envs", "2", "--total-timesteps", "240",
                      "--learning-starts", "120", "--batch-size", "32", "--num-mc-samples", "4", "--num-candidates",
                      "4", "--eval-frequency", "120", "--eval-episodes", "2", "--hidden-dim", "32", "--save-model",
                      "--run-dir", runs)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (model,) = glob.glob(os.path.join(runs, "*", "som.pt"))
    ev = evaluate(model, "--episodes", "2", "--num-candidates", "1")
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert "Pendulum-v1: return" in ev.stdout and "over 2 episodes" in ev.stdout
    for bad in ("0", "-3"):
        assert_one_sentence_error(
            evaluate(model, "--num-candidates", bad), f"--num-candidates must be positive, got {bad}."
        )
    assert_one_sentence_error(evaluate(model, "--flow-steps", "0"), "--flow-steps must be positive, got 0.")
    # the run's record: every evaluation of the three policies, the command and commit from run_info.jsonl
    figures = [sys.executable, os.path.join(ROOT, "scripts", "figures.py")]
    results = str(tmp_path / "results" / "tiny")
    exported = subprocess.run([*figures, "export", runs, "--out", results], capture_output=True, text=True)
    assert exported.returncode == 0, exported.stderr[-2000:]
    (path,) = glob.glob(os.path.join(results, "*.json"))
    record = json.load(open(path))
    assert os.path.basename(path) == "som__Pendulum-v1__1.json"
    assert record["command"].startswith("python som.py --env-id Pendulum-v1 --num-envs 2 --total-timesteps 240")
    commit = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty=+", "--exclude=*"],
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    assert record["commit"] == commit and record["versions"]["torch"] == torch.__version__
    for tag in ("eval/episodic_return", "eval/episodic_return_n1", "eval/episodic_return_zero_noise"):
        assert record["evaluations"][tag]["steps"] == [120, 240]
    assert record["training_episodes"]["episodes"] == 0 and record["processes"] == 1  # 120 steps per env: none ended
    assert record["wall_time_s"]["warm_up"] > 0 and record["wall_time_s"]["training"] > 0
    out = str(tmp_path / "curves.png")
    fig = subprocess.run([*figures, "curves", results, "--out", out], capture_output=True, text=True)
    assert fig.returncode == 0, fig.stderr[-2000:]
    assert os.path.getsize(out) > 10_000


def _record(exp, env, seed, returns, script="som.py", tags=("eval/episodic_return",)):
    """A record as figures.py export writes it, with these evaluation returns (one every 1,000 steps)."""
    from scripts import figures

    steps = [1000 * (i + 1) for i in range(len(returns))]
    return {"format": figures.RECORD_FORMAT, "exp_name": exp, "env_id": env, "seed": seed,
            "command": f"python {script} --env-id {env} --seed {seed}", "commit": "abc1234", "commits": ["abc1234"],
            "versions": {"torch": "2.13.0"}, "machine": "a test", "wall_time_s": {"warm_up": 60.0, "training": 540.0},
            "evaluations": {tag: {"steps": steps, "returns": returns} for tag in tags}}  # fmt: skip


def test_task_table_is_the_seeds_mean_and_std_of_each_runs_last_four_evaluations():
    from scripts import figures

    records = [_record("sac", "Hopper-v4", s, [0, 0, 90, 110, 90, 110], "scripts/sac_baseline.py") for s in (1, 2)]
    records += [_record("som", "Hopper-v4", 1, [0, 0, 100, 100, 100, 100], tags=tuple(figures.EVAL_TAGS)),
                _record("som", "Hopper-v4", 2, [0, 0, 300, 300, 300, 300], tags=tuple(figures.EVAL_TAGS)),
                _record("som", "Ant-v4", 1, [5, 5, 5, 5], tags=tuple(figures.EVAL_TAGS))]  # fmt: skip
    rows = {line.split(" | ")[0].lstrip("| "): line for line in figures.task_table(records)}
    assert rows["method"] == "| method | Hopper-v4 | Ant-v4 |"  # the papers' task order
    sac = "SAC (Stable-Baselines3), mean action"
    assert rows[sac] == f"| {sac} | 100.0 ± 0.0 | not run |"
    assert rows["som.py, best-of-32"] == "| som.py, best-of-32 | 200.0 ± 100.0 | 5.0 (1 of 2 seeds) |"
    assert "som.py, N = 1" in rows and "som.py, zero noise" in rows
    # the aggregate leaves out Ant-v4 (one seed, no SAC) and says which tasks it covers
    aggregate = {line.split(" | ")[0].lstrip("| "): line for line in figures.aggregate_table(records, reps=200)}
    assert aggregate["som.py, best-of-32"].startswith("| som.py, best-of-32 | Hopper (2 seeds) | 2.00 (")
    assert "| 0.75 (" in aggregate["som.py, best-of-32"]  # P(100 or 300 beats 100 or 100): (0.5 + 1) / 2


def test_training_episodes_are_binned_to_at_most_the_given_points():
    from scripts import figures

    assert figures.binned([1, 2, 3], [1.0, 2.0, 3.0], 5) == ([1, 2, 3], [1.0, 2.0, 3.0])
    steps, means = figures.binned(list(range(1, 11)), [float(x) for x in range(10)], 4)
    assert steps == [2, 5, 8, 10] and means == [0.5, 3.0, 6.0, 8.5]  # bins of 2, 3, 3, 2 episodes


def test_pages_hold_the_tables_the_records_give_and_bad_records_are_refused(tmp_path):
    from scripts import figures

    page = tmp_path / "page.md"
    page.write_text("x\n<!-- table set/tasks -->\n| stale |\n<!-- end table -->\ny\n")
    tables = {"set/tasks": ["| fresh |"]}
    assert figures.fill_pages([str(page)], tables, write=False) == [f"{os.path.relpath(page, ROOT)}: set/tasks"]
    assert figures.fill_pages([str(page)], tables, write=True) and "| fresh |\n<!-- end" in page.read_text()
    assert figures.fill_pages([str(page)], tables, write=False) == []
    cli = [sys.executable, os.path.join(ROOT, "scripts", "figures.py")]
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.json").write_text('{"format": "something else"}')
    for args, message in ((["curves", str(tmp_path / "empty"), "--out", "x.png"], "no run records (*.json) under"),
                          (["curves", str(tmp_path / "other"), "--out", "x.png"], "is not a run record of format"),
                          (["export", str(tmp_path / "empty"), "--out", "x"], "no run folders")):  # fmt: skip
        assert_one_sentence_error(subprocess.run([*cli, *args], capture_output=True, text=True), message)


def test_sac_baseline_writes_the_scripts_tags(tmp_path):
    """Stable-Baselines3's SAC with the scripts' env, warm-up and evaluation, logging the scripts' TensorBoard tags."""
    pytest.importorskip("stable_baselines3")
    runs = str(tmp_path / "runs")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "sac_baseline.py"), "--env-id", "Pendulum-v1",
                           "--total-timesteps", "400", "--learning-starts", "200", "--batch-size", "32",
                           "--eval-frequency", "200", "--eval-episodes", "2", "--run-dir", runs],
                          capture_output=True, text=True, timeout=600, env=script_env())  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    scalars = read_scalars(runs)
    assert [s for s, _ in scalars["eval/episodic_return"]] == [200, 400]
    assert [s for s, _ in scalars["charts/episodic_return"]] == [200, 400]  # Pendulum's episodes are 200 steps
    assert all(-2000 < v <= 0 for _, v in scalars["eval/episodic_return"])
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "sac_baseline.py"), "--batch-size", "0"],
                         capture_output=True, text=True, env=script_env())  # fmt: skip
    assert_one_sentence_error(bad, "--batch-size must be positive")


def test_speed_tables_are_the_benchmark_records_rows_with_floors_and_the_releases_ratios():
    from scripts import figures

    record = {"format": figures.BENCHMARK_FORMAT, "command": "python tests/benchmark.py", "commit": "abc1234",
              "machine": "a test", "versions": {"torch": "2.13.0"}, "device": "cpu", "matmul_gflops": 100.0,
              "sizes": {"obs": 17, "act": 6, "batch": 256, "K": 100, "N": 32},
              "rows": [{"what": "**SOM full update** (critic + actor)", "eager_ms": 400.0, "compiled_ms": 200.0,
                        "gflop": 15.0},
                       {"what": "NC-LQL action, one observation, 20 Langevin steps", "eager_ms": 16.0,
                        "compiled_ms": 1.29, "gflop": 0.0}]}  # fmt: skip
    table = figures.speed_table(record)
    # 15 GFLOP at the run's 100 GFLOP/s: a 150 ms floor; 15 GFLOP in 200 ms: 75 GFLOP/s
    assert table[2] == "| **SOM full update** (critic + actor) | 400.00 | 200.00 | 2.0x | 38 | 75 | 150.0 |"
    summary = figures.speed_summary(record)
    assert summary[2] == "| SOM full update (critic + actor) | 200.00 | 1.33x the floor |  |"
    assert summary[3] == "| NC-LQL action, one observation, 20 Langevin steps | 1.29 |  | 2.0x slower |"  # 0.645 ms
