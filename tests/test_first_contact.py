"""What a new user meets first: a range check for every numeric flag, --resume PATH alone, the progress bar, the
device line, the -v4 note, --track offline and without a login, the plug-in example of docs/api.md, and a script
with common.py copied into a folder of their own."""

import dataclasses
import gc
import glob
import io
import math
import os
import re
import shutil
import subprocess
import sys
import typing

import pytest
import torch
from helpers import ROOT, assert_one_sentence_error, run_script, script_env
from tqdm import tqdm

import common
import nc_lql
import som

# -------------------------------------------------------------------------------------------------- range checks
# (overrides of the Args defaults, the error message expected). Every numeric flag of each script appears at least
# once (test_every_numeric_flag_has_a_bad_input_case keeps it so).
SHARED_BAD = [
    ({"seed": -1}, "--seed must be in [0, 4294967295], got -1."),
    ({"seed": 2**32}, "--seed must be in [0, 4294967295], got 4294967296."),
    ({"total_timesteps": 0}, "--total-timesteps must be positive, got 0."),
    ({"num_envs": 0}, "--num-envs must be positive, got 0."),
    ({"learning_starts": -5}, "--learning-starts must be positive, got -5."),
    ({"buffer_size": 0}, "--buffer-size must be positive, got 0."),
    ({"buffer_size": 3, "num_envs": 5}, "--buffer-size (3) must be at least --num-envs (5)."),
    ({"batch_size": 0}, "--batch-size must be positive, got 0."),
    ({"batch_size": 512, "learning_starts": 100}, "--batch-size (512) must not exceed --learning-starts (100)."),
    ({"gamma": 1.5}, "--gamma must be in [0, 1], got 1.5."),
    ({"gamma": -0.1}, "--gamma must be in [0, 1], got -0.1."),
    ({"gamma": math.nan}, "--gamma must be in [0, 1], got nan."),
    ({"tau": 0.0}, "--tau must be in (0, 1], got 0.0."),
    ({"tau": 1.5}, "--tau must be in (0, 1], got 1.5."),
    ({"reward_scale": 0.0}, "--reward-scale must be positive, got 0.0."),
    ({"critic_lr": 0.0}, "--critic-lr must be positive, got 0.0."),
    ({"critic_lr": math.inf}, "--critic-lr must be a finite number, got inf."),
    ({"hidden_dim": 0}, "--hidden-dim must be positive, got 0."),
    ({"num_hidden": 0}, "--num-hidden must be positive, got 0."),
    ({"eval_frequency": 0}, "--eval-frequency must be positive, got 0."),
    ({"eval_episodes": 0}, "--eval-episodes must be positive, got 0."),
    ({"log_frequency": -1}, "--log-frequency must be positive, got -1."),
    ({"checkpoint_frequency": 0}, "--checkpoint-frequency must be positive, got 0."),
]
BAD = {
    som: SHARED_BAD
    + [
        ({"actor_lr": -1e-4}, "--actor-lr must be positive, got -0.0001."),
        ({"num_mc_samples": 0}, "--num-mc-samples must be positive, got 0."),
        ({"num_mc_samples": 1}, "--num-mc-samples must be at least 2, got 1."),
        ({"beta_min": -0.1}, "--beta-min must be at least 0, got -0.1."),
        ({"beta_max": 0.0}, "--beta-max must be positive, got 0.0."),
        ({"beta_min": 5.0, "beta_max": 1.0}, "--beta-min (5.0) must be below --beta-max (1.0)."),
        ({"alpha": 0.0}, "--alpha must be positive, got 0.0."),
        ({"w": 0.0}, "--w must be positive, got 0.0."),
        ({"num_candidates": 0}, "--num-candidates must be positive, got 0."),
        ({"num_target_candidates": 0}, "--num-target-candidates must be positive, got 0."),
        ({"num_collect_candidates": -1}, "--num-collect-candidates must be positive, got -1."),
        ({"flow_matching_fraction": 1.5}, "--flow-matching-fraction must be in [0, 1], got 1.5."),
        ({"target_point_fraction": -0.1}, "--target-point-fraction must be in [0, 1], got -0.1."),
        ({"adaptive_power": -0.5}, "--adaptive-power must be at least 0, got -0.5."),
        ({"t_min": 0.0}, "--t-min must be in (0, 0.5), got 0.0."),
        ({"t_min": 0.5}, "--t-min must be in (0, 0.5), got 0.5."),
    ],
    nc_lql: SHARED_BAD
    + [
        ({"num_levels": 0}, "--num-levels must be positive, got 0."),
        ({"num_levels": 1}, "NC-LQL needs --num-levels of at least 2 (or use --lql)."),
        ({"sigma_max": 0.0}, "--sigma-max must be positive, got 0.0."),
        ({"sigma_min": -0.001}, "--sigma-min must be positive, got -0.001."),
        ({"sigma_min": 0.5}, "--sigma-min (0.5) must be below --sigma-max (0.1)."),
        ({"steps_per_level": 0}, "--steps-per-level must be positive, got 0."),
        ({"step_lr": 0.0}, "--step-lr must be positive, got 0.0."),
        ({"w": -1.0}, "--w must be positive, got -1.0."),
        ({"num_chains": 0}, "--num-chains must be positive, got 0."),
        ({"lql_steps": 0}, "--lql-steps must be positive, got 0."),
        ({"lql_step_size": 0.0}, "--lql-step-size must be positive, got 0.0."),
    ],
}
CASES = [(module, overrides, message) for module, cases in BAD.items() for overrides, message in cases]


def _numeric_fields(args_cls) -> list[str]:
    hints = typing.get_type_hints(args_cls)
    numeric = (int, float, typing.Optional[int], typing.Optional[float])
    return [f.name for f in dataclasses.fields(args_cls) if hints[f.name] in numeric]


@pytest.mark.parametrize("module", [som, nc_lql], ids=["som", "nc_lql"])
def test_every_numeric_flag_has_a_bad_input_case(module):
    covered = {name for overrides, _ in BAD[module] for name in overrides}
    missing = [name for name in _numeric_fields(module.Args) if name not in covered]
    assert not missing, f"numeric flags without a range check case: {missing}"


@pytest.mark.parametrize("module,overrides,message", CASES, ids=[f"{m.__name__}-{o}" for m, o, _ in CASES])
def test_out_of_range_flag_is_one_sentence_with_status_2(module, overrides, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.validate(module.Args(env_id="Pendulum-v1", **overrides))
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {message}"]


@pytest.mark.parametrize("module", [som, nc_lql], ids=["som", "nc_lql"])
def test_the_defaults_and_the_range_edges_are_accepted(module, capsys):
    module.validate(module.Args(env_id="Pendulum-v1"))
    module.validate(module.Args(env_id="Pendulum-v1", gamma=0.0, tau=1.0, seed=0))
    module.validate(module.Args(env_id="Pendulum-v1", gamma=1.0, seed=2**32 - 1))
    if module is som:
        som.validate(som.Args(env_id="Pendulum-v1", beta_min=0.0, flow_matching_fraction=1.0, adaptive_power=0.0))
    else:
        nc_lql.validate(nc_lql.Args(env_id="Pendulum-v1", lql=True, num_levels=1))
    assert "error" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "script,cli,message",
    [
        ("som.py", ["--gamma", "1.5"], "--gamma must be in [0, 1], got 1.5."),
        ("som.py", ["--hidden-dim", "0"], "--hidden-dim must be positive, got 0."),
        ("som.py", ["--actor-lr", "-1e-4"], "--actor-lr must be positive, got -0.0001."),
        ("som.py", ["--beta-min", "5", "--beta-max", "1"], "--beta-min (5.0) must be below --beta-max (1.0)."),
        ("nc_lql.py", ["--tau", "0"], "--tau must be in (0, 1], got 0.0."),
        ("nc_lql.py", ["--critic-lr=0"], "--critic-lr must be positive, got 0.0."),
    ],
)
def test_bad_flags_on_the_command_line(script, cli, message):
    proc = run_script(script, "--env-id", "Pendulum-v1", *cli)
    assert proc.returncode == 2
    assert_one_sentence_error(proc, message)


# -------------------------------------------------------------------------------------------------- --resume
def _fake_checkpoint(tmp_path, **overrides) -> str:
    path = str(tmp_path / "checkpoint.pt")
    args = som.Args(env_id="Pendulum-v1", total_timesteps=1000, gamma=0.9, **overrides)
    common.save_atomic({"algorithm": "som", "args": dataclasses.asdict(args), "counters": {}}, path)
    return path


def _resume(path, *cli):
    cli = ["--resume", path, *cli]
    return common.resume_args(som.Args(resume=path), path, "som", cli=cli)


def test_resume_alone_takes_every_argument_from_the_checkpoint(tmp_path):
    path = _fake_checkpoint(tmp_path, hidden_dim=64)
    args = _resume(path)
    assert (args.env_id, args.gamma, args.hidden_dim, args.total_timesteps) == ("Pendulum-v1", 0.9, 64, 1000)
    assert args.resume == path


def test_resume_takes_the_flags_that_may_change_and_agreeing_ones(tmp_path):
    path = _fake_checkpoint(tmp_path)
    args = _resume(path, "--total-timesteps=5000", "--no-cuda", "--eval-frequency", "10", "--env-id", "Pendulum-v1",
                   "--gamma", "0.9")  # fmt: skip
    assert (args.total_timesteps, args.cuda, args.eval_frequency, args.gamma) == (5000, False, 10, 0.9)


@pytest.mark.parametrize(
    "cli,message",
    [
        (["--env-id", "Hopper-v4"], "was trained on Pendulum-v1, not Hopper-v4; leave out --env-id to continue it."),
        (["--gamma", "0.99"], "--gamma 0.99 contradicts"),
        (["--hidden_dim=64"], "--hidden-dim 64 contradicts"),
    ],
)
def test_resume_refuses_a_flag_that_contradicts_the_checkpoint(tmp_path, capsys, cli, message):
    path = _fake_checkpoint(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        _resume(path, *cli)
    assert exit_info.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert message in line


@pytest.mark.parametrize("change", ["removed", "added"])
def test_resume_refuses_a_checkpoint_of_a_version_with_other_flags(tmp_path, capsys, change):
    """A flag since removed, or one added since, would change the run's course: one sentence naming the commit."""
    path = str(tmp_path / "checkpoint.pt")
    saved = dataclasses.asdict(som.Args(env_id="Pendulum-v1"))
    if change == "removed":
        saved["actor_points"] = "boltzmann"
    else:
        del saved["num_collect_candidates"]
    common.save_atomic({"algorithm": "som", "args": saved, "counters": {}, "commit": "6c0c45e"}, path)
    with pytest.raises(SystemExit) as exit_info:
        _resume(path)
    assert exit_info.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    named = "--actor-points" if change == "removed" else "--num-collect-candidates"
    assert f"was written by a version of som.py with other flags ({named}); continue it with" in line
    assert line.endswith("(commit 6c0c45e).")


def test_checkpoints_name_the_commit_of_the_code_that_wrote_them():
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    commit = common.source_commit()
    assert len(commit.rstrip("+")) >= 7 and head.stdout.startswith(commit.rstrip("+"))


def test_a_saved_model_with_a_flag_since_removed_still_loads(tmp_path):
    """Evaluation needs only the networks: a flag removed since is left out, one added since takes its default."""
    path = str(tmp_path / "som.pt")
    args = {k: v for k, v in dataclasses.asdict(som.Args(env_id="Pendulum-v1", hidden_dim=32)).items() if k != "w"}
    actor, critic = som.build_networks(som.Args(hidden_dim=32), 3, 1, "cpu")
    common.save_atomic({"algorithm": "som", "args": {**args, "actor_points": "boltzmann"}, "obs_dim": 3, "act_dim": 1,
                        "actor": actor.state_dict(), "critic": critic.state_dict()}, path)  # fmt: skip
    policy, loaded = som.load_policy(path, num_candidates=1)
    assert (loaded.hidden_dim, loaded.w) == (32, som.Args().w)
    assert policy(torch.zeros(4, 3)).shape == (4, 1)


# -------------------------------------------------------------------------------------------------- progress
class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def clock(monkeypatch):
    import tqdm.std

    fake = _Clock()
    monkeypatch.setattr(tqdm.std, "time", fake)  # tqdm's clock
    return fake


def _drive(progress, clock, start, stop, steps_per_second, per_update=5):
    step = start
    while step < stop:
        clock.now += per_update / steps_per_second
        step += per_update
        progress.update(step, max(0, step - progress.learning_starts) // per_update, -3.5)
    return step


def test_progress_rate_and_eta_ignore_the_warm_up_and_the_steps_before_a_resume(clock):
    out = io.StringIO()
    progress = common.Progress(100_000, 10_000, stream=out)
    _drive(progress, clock, 0, 10_000, 5000.0)  # warm-up: 5000 steps/s
    assert progress.bar.desc == "training"
    _drive(progress, clock, 10_000, 12_000, 20.0)  # training: 20 steps/s for 100 s
    assert progress.rate() == pytest.approx(20.0)
    progress.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert any(x.startswith("warm-up: 100%") and "10000/10000" in x and "5000.00 steps/s" in x for x in lines)
    training = [x for x in lines if x.startswith("training:")]
    assert len(training) == 3  # at the start, one a minute over 100 s, and at the end
    # the ETA at the phase's own rate: (100000 - 11205) / 20 s
    assert training[1].endswith("11205/100000 [01:00<1:13:59, 20.00 steps/s, 241 updates, last return -3.5]")

    resumed = common.Progress(100_000, 10_000, start_step=50_000, stream=io.StringIO())
    _drive(resumed, clock, 50_000, 50_700, 10.0)
    assert resumed.rate() == pytest.approx(10.0)  # not (50700 steps / 70 s)


def test_progress_rate_follows_the_recent_speed(clock):
    progress = common.Progress(10**6, 10, start_step=10, stream=io.StringIO())
    _drive(progress, clock, 10, 10_010, 100.0)  # 100 s at 100 steps/s
    _drive(progress, clock, 10_010, 16_010, 10.0)  # then 600 s at 10 steps/s
    assert progress.rate() == pytest.approx(10.0, rel=0.15)


def test_a_progress_dropped_unclosed_leaves_no_bar_behind():
    """Freed at once (no reference cycle), so a later bar is drawn at the top line, not below a dead one."""
    gc.disable()
    try:
        before = len(tqdm._instances)
        common.Progress(1000, 100, stream=io.StringIO())
        assert len(tqdm._instances) == before
    finally:
        gc.enable()


def test_progress_on_a_terminal_is_a_bar_with_messages_above_it(clock):
    out = _Terminal()
    progress = common.Progress(1000, 100, stream=out)
    _drive(progress, clock, 0, 300, 10.0)
    progress.write("eval at 300: -12.0 +- 1.0")
    progress.close()
    text = out.getvalue()
    assert "\r" in text and "warm-up: " in text and "training: " in text and "|" in text
    assert "eval at 300: -12.0 +- 1.0\n" in text
    assert text.count("\n") == 3  # the warm-up bar left in place, the message, the training bar at the end


def test_a_run_prints_the_device_the_v4_note_once_and_plain_progress(tmp_path):
    """Hopper-v4 with --no-cuda, stdout a pipe: the device and the note come first, no gymnasium warning, no redraw."""
    cmd = [sys.executable, os.path.join(ROOT, "som.py"), "--env-id", "Hopper-v4", "--no-cuda", "--num-envs", "2",
           "--learning-starts", "60", "--batch-size", "16", "--num-mc-samples", "4", "--num-candidates", "2",
           "--eval-episodes", "2", "--hidden-dim", "16", "--total-timesteps", "80",
           "--run-dir", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=dict(script_env(), PYTHONWARNINGS="default"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("note: Hopper-v4 is not the newest version") and "on purpose" in lines[0]
    assert lines[1] == "device: cpu (--no-cuda)"
    assert proc.stdout.count("note:") == 1 and "out of date" not in proc.stderr
    assert "precision lowered" not in proc.stderr  # the rescaled action box is float32, as the envs' own
    assert "\r" not in proc.stdout and "warm-up: 100%" in proc.stdout and "training: 100%" in proc.stdout


def test_pick_device_says_where_it_trains(capsys):
    assert common.pick_device(False) == torch.device("cpu")
    assert capsys.readouterr().out == "device: cpu (--no-cuda)\n"
    device = common.pick_device(True)
    out = capsys.readouterr().out
    if torch.cuda.is_available():
        assert device.type == "cuda" and out.startswith("device: cuda (")
    else:
        assert device.type == "cpu" and out == "device: cpu (no CUDA device found)\n"


# -------------------------------------------------------------------------------------------------- --track
NC_TINY = ["--env-id", "Pendulum-v1", "--num-envs", "2", "--learning-starts", "40", "--batch-size", "16",
           "--eval-episodes", "2", "--hidden-dim", "16", "--total-timesteps", "60"]  # fmt: skip


def _wandb_env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in script_env().items() if not k.startswith("WANDB_")}
    return dict(env, HOME=str(tmp_path), **extra)  # no ~/.netrc login


def _run_tracked(tmp_path, env):
    cmd = [sys.executable, os.path.join(ROOT, "nc_lql.py"), *NC_TINY, "--track", "--run-dir", str(tmp_path / "runs")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)


def test_track_offline_writes_the_wandb_run(tmp_path):
    proc = _run_tracked(tmp_path, _wandb_env(tmp_path, WANDB_MODE="offline"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = glob.glob(os.path.join("wandb", "offline-run-*"))
    assert glob.glob(os.path.join(run, "run-*.wandb"))
    assert glob.glob(os.path.join(run, "files", "**", "events.out.tfevents.*"), recursive=True)  # synced TensorBoard


def test_track_without_a_login_is_one_sentence_naming_offline_mode(tmp_path):
    proc = _run_tracked(tmp_path, _wandb_env(tmp_path))
    assert proc.returncode == 2
    assert_one_sentence_error(proc, "--track could not start Weights and Biases (No API key configured)")
    assert "WANDB_MODE=offline" in proc.stderr
    assert not glob.glob(str(tmp_path / "runs" / "*"))  # no empty run directory left behind


def test_track_without_a_network_is_one_sentence_naming_offline_mode(tmp_path):
    """A key but no server to reach (a closed local port stands for a missing network)."""
    env = _wandb_env(tmp_path, WANDB_API_KEY="0" * 40, WANDB_BASE_URL="http://127.0.0.1:9", WANDB_INIT_TIMEOUT="3")
    proc = _run_tracked(tmp_path, env)
    assert proc.returncode == 2
    assert_one_sentence_error(proc, "--track could not start Weights and Biases")
    assert "WANDB_MODE=offline" in proc.stderr


# -------------------------------------------------------------------------------------------------- plug-in example
def test_the_plug_in_example_of_docs_api_runs():
    page = open(os.path.join(ROOT, "docs", "api.md")).read()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", page, re.S) if "class Critic(nn.Module)" in b]
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], "docs/api.md", "exec"), namespace)
    assert namespace["score"].shape == (8, 6) and torch.isfinite(namespace["score"]).all()
    chains = namespace["chains"]
    assert chains.shape == (1, 8, 6) and chains.abs().max() <= 1


# -------------------------------------------------------------------------------------------------- copied alone
@pytest.mark.parametrize("script", ["som.py", "nc_lql.py"])
def test_a_script_and_common_py_copied_alone_train_save_and_load(tmp_path, script):
    """The script and common.py in a folder of their own, outside any checkout and without tests/ or scripts/ on the
    path: a short run trains and saves its model, and the copy's load_policy plays it."""
    for name in (script, "common.py"):
        shutil.copy(os.path.join(ROOT, name), tmp_path)
    env = {k: v for k, v in script_env().items() if k != "PYTHONPATH"}
    extra = ["--num-mc-samples", "4", "--num-candidates", "2"] if script == "som.py" else []
    cli = [*NC_TINY, *extra, "--no-cuda", "--save-model", "--run-dir", "runs"]
    proc = subprocess.run([sys.executable, script, *cli], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (model,) = glob.glob(str(tmp_path / "runs" / "*" / "*.pt"))
    play = (
        "import sys, torch, {m}; policy, args = {m}.load_policy(sys.argv[1]); a = policy(torch.zeros(5, 3)); "
        "assert a.shape == (5, 1) and a.abs().max() <= 1, a; print(args.env_id)"
    )
    loaded = subprocess.run([sys.executable, "-c", play.format(m=script[:-3]), model], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert loaded.returncode == 0 and loaded.stdout.strip() == "Pendulum-v1", loaded.stderr[-3000:]
