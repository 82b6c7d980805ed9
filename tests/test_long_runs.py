"""Long runs lose nothing: checkpoints restore exactly, signals checkpoint and exit 0, NaN stops with the last good
state, and every bad input gets one sentence and a non-zero exit. Both scripts."""

import glob
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import ROOT, assert_one_sentence_error, assert_same_run, read_scalars, run_script, script_env

import common
import som
from scripts import bandit

SOM_TINY = ["--num-envs", "2", "--learning-starts", "100", "--batch-size", "32", "--num-mc-samples", "8",
            "--num-candidates", "4", "--eval-episodes", "2", "--log-frequency", "20", "--hidden-dim", "32"]  # fmt: skip
NC_TINY = ["--num-envs", "2", "--learning-starts", "100", "--batch-size", "32", "--eval-episodes", "2",
           "--log-frequency", "20", "--hidden-dim", "32"]  # fmt: skip
TINY = {"som.py": SOM_TINY, "nc_lql.py": NC_TINY}


def test_checkpoint_round_trip_restores_networks_optimisers_buffer_counters_and_rng(tmp_path):
    def build():
        args = som.Args(
            env_id="Pendulum-v1",
            batch_size=16,
            num_mc_samples=4,
            num_candidates=2,
            num_target_candidates=2,
            hidden_dim=16,
        )
        envs = common.make_vector_env("Pendulum-v1", 2, seed=0)
        actor, critic = som.build_networks(args, 3, 1, "cpu")
        target = som.build_networks(args, 3, 1, "cpu")[1]
        opts = {"actor": torch.optim.Adam(actor.parameters()), "critic": torch.optim.Adam(critic.parameters())}
        rb = som.ReplayBuffer(100, 3, 1, torch.device("cpu"))
        return args, envs, {"actor": actor, "critic": critic, "critic_target": target}, opts, rb

    args, envs, mods, opts, rb = build()
    for _ in range(20):
        rb.add(np.random.randn(2, 3), np.random.randn(2, 3), envs.action_space.sample(), np.random.randn(2), [0, 1])
    for _ in range(3):
        batch = rb.sample(16)
        som.critic_update(args, batch, mods["actor"], mods["critic"], mods["critic_target"], opts["critic"])
        som.actor_update(args, batch, mods["actor"], mods["critic"], opts["actor"])
    path = str(tmp_path / "checkpoint.pt")
    common.save_checkpoint(path, "som", args, mods, opts, {"global_step": 40, "updates": 3}, envs, rb)
    expected_draws = (random.random(), np.random.rand(), torch.rand(3), envs.action_space.sample())

    _, envs2, mods2, opts2, rb2 = build()
    counters = common.load_checkpoint(path, "som", "Pendulum-v1", mods2, opts2, envs2, rb2)
    assert counters == {"global_step": 40, "updates": 3}
    for name in mods:
        for a, b in zip(mods[name].state_dict().values(), mods2[name].state_dict().values()):
            assert torch.equal(a, b), name
    for name in opts:
        s1, s2 = opts[name].state_dict()["state"], opts2[name].state_dict()["state"]
        assert all(torch.equal(s1[k]["exp_avg_sq"], s2[k]["exp_avg_sq"]) for k in s1)
    assert rb2.size == rb.size and rb2.pos == rb.pos and torch.equal(rb2.obs[: rb.size], rb.obs[: rb.size])
    draws = (random.random(), np.random.rand(), torch.rand(3), envs2.action_space.sample())
    assert draws[0] == expected_draws[0] and draws[1] == expected_draws[1]
    assert torch.equal(draws[2], expected_draws[2]) and np.array_equal(draws[3], expected_draws[3])


@pytest.mark.parametrize("new_capacity", [40, 24, 10])
def test_a_full_buffer_resumes_into_any_capacity_with_only_written_rows_in_order(new_capacity, tmp_path):
    """A full 24-row buffer has wrapped (36 rows added, 3 per step: the next write is at row 12). Resumed into a larger
    (40), the same (24) or a smaller (10) capacity, it holds exactly the newest rows that were added, oldest first,
    the next write goes right after the newest, and every sampled row is one that was added."""
    envs = common.make_vector_env("Pendulum-v1", 3, seed=0)
    args = som.Args(env_id="Pendulum-v1")
    rb = som.ReplayBuffer(24, 3, 1, torch.device("cpu"))
    for i in range(12):  # row k of the history carries obs = k everywhere, reward = k, action = k / 100
        k = np.arange(3 * i, 3 * i + 3, dtype=np.float32)
        rb.add(np.repeat(k[:, None], 3, 1), np.repeat(k[:, None] + 1, 3, 1), k[:, None] / 100, k, k % 2)
    assert (rb.size, rb.pos) == (24, 12)
    path = str(tmp_path / "checkpoint.pt")
    common.save_checkpoint(path, "som", args, {}, {}, {"global_step": 36}, envs, rb)

    resumed = som.ReplayBuffer(new_capacity, 3, 1, torch.device("cpu"))
    common.load_checkpoint(path, "som", "Pendulum-v1", {}, {}, envs, resumed)
    kept = min(24, new_capacity)
    newest = torch.arange(36 - kept, 36, dtype=torch.float32)  # the rows that survive, oldest first
    assert resumed.size == kept and resumed.pos == kept % new_capacity
    torch.testing.assert_close(resumed.rewards[:kept], newest)
    torch.testing.assert_close(resumed.obs[:kept], newest[:, None].expand(kept, 3))
    torch.testing.assert_close(resumed.next_obs[:kept, 0], newest + 1)
    torch.testing.assert_close(resumed.actions[:kept, 0], newest / 100)
    torch.testing.assert_close(resumed.terminated[:kept], newest % 2)
    # three more steps after the resume: the newest rows follow on, nothing unwritten is ever sampled
    for i in range(12, 15):
        k = np.arange(3 * i, 3 * i + 3, dtype=np.float32)
        resumed.add(np.repeat(k[:, None], 3, 1), np.repeat(k[:, None] + 1, 3, 1), k[:, None] / 100, k, k % 2)
    rows = resumed.rewards[chronological_order(resumed)]
    torch.testing.assert_close(rows, torch.arange(45 - len(rows), 45, dtype=torch.float32))
    obs, actions, rewards, next_obs, _ = resumed.sample(2000)
    assert set(rewards.tolist()) == set(rows.tolist())
    torch.testing.assert_close(obs[:, 0], rewards)
    torch.testing.assert_close(next_obs[:, 0], rewards + 1)


def chronological_order(rb) -> torch.Tensor:
    return common.chronological_rows(rb.size, rb.pos, rb.capacity)


def test_a_file_of_the_older_format_is_refused_in_one_sentence(tmp_path):
    path = str(tmp_path / "old.pt")
    torch.save({"algorithm": "som", "args": {"env_id": "Hopper-v4"}, "counters": {}}, path)  # no "format": 1
    proc = run_script("som.py", "--resume", path)
    assert_one_sentence_error(proc, "has file format 1, written by an older version of this code")


def test_polyak_update_moves_each_target_parameter_a_fraction_tau_toward_the_online_one():
    torch.manual_seed(0)
    online, target = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    before = [p.detach().clone() for p in target.parameters()]
    common.polyak_update(target, online, 0.1)
    for new, old, o in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * o)
    assert not any(p.requires_grad and p.grad is not None for p in target.parameters())


@pytest.mark.parametrize("script,sig", [("som.py", signal.SIGTERM), ("nc_lql.py", signal.SIGINT)])
def test_signal_writes_a_checkpoint_exits_zero_and_resume_continues(script, sig, tmp_path):
    runs = str(tmp_path / "runs")
    cmd = [sys.executable, os.path.join(ROOT, script), "--env-id", "Pendulum-v1", *TINY[script],
           "--total-timesteps", "100000", "--checkpoint-buffer", "--run-dir", runs]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=script_env())
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until it is learning (the event file shows updates)
        time.sleep(1.0)
        events = glob.glob(os.path.join(runs, "*", "events.*"))
        if events and os.path.getsize(events[0]) > 3000:
            break
    time.sleep(2.0)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert f"{sig.name} received" in out and "checkpoint written to" in out
    (ckpt_path,) = glob.glob(os.path.join(runs, "*", "checkpoint.pt"))
    ckpt = torch.load(ckpt_path, weights_only=False)
    stopped_at, updates = ckpt["counters"]["global_step"], ckpt["counters"]["updates"]
    assert stopped_at > 100 and updates > 0 and len(ckpt["buffer"]["obs"]) == stopped_at
    assert ckpt["commit"] == common.source_commit()  # named when a later version refuses to continue it

    # no --env-id: it and every other argument come from the checkpoint
    resumed = run_script(script, "--resume", ckpt_path, "--total-timesteps", str(stopped_at + 60), "--eval-frequency",
                         "100000")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {ckpt_path} at step {stopped_at} with {stopped_at} transitions" in resumed.stdout
    scalars = read_scalars(runs)  # one run directory: the resumed run logs into the same event files
    steps, values = zip(*scalars["charts/updates"])
    assert steps[-1] > stopped_at and values[-1] == updates + (steps[-1] - stopped_at) // 2  # one per vector step
    assert list(steps) == sorted(steps)  # nothing logged twice for the same steps
    assert scalars["eval/episodic_return"][-1][0] == stopped_at + 60


BANDIT = ["--env-id", bandit.ENV_ID, "--num-envs", "2", "--learning-starts", "40", "--batch-size", "16",
          "--eval-frequency", "60", "--eval-episodes", "3", "--log-frequency", "20", "--hidden-dim", "32",
          "--checkpoint-frequency", "60", "--checkpoint-buffer"]  # fmt: skip
BANDIT_EXTRA = {"som.py": ["--num-mc-samples", "8", "--num-candidates", "4"], "nc_lql.py": []}


@pytest.mark.parametrize("script", ["som.py", "nc_lql.py"])
def test_a_resumed_run_is_the_uninterrupted_run(script, tmp_path):
    """On the bandit (no state inside an episode) 120 steps in one go and 60 steps, a checkpoint with the buffer and
    --resume to 120 give the same evaluation returns, networks, optimiser states, counters and replay buffer, bit for
    bit. The first half's buffer holds 60 rows and is full when it stops (its capacity is min(--buffer-size, budget)),
    so the resumed run also carries a full buffer into a larger one. (Compiled: tests/test_compile.py.)"""
    cli = [*BANDIT, *BANDIT_EXTRA[script]]
    whole = run_script(script, *cli, "--total-timesteps", "120", "--run-dir", str(tmp_path / "whole"))
    half = run_script(script, *cli, "--total-timesteps", "60", "--run-dir", str(tmp_path / "split"))
    assert whole.returncode == 0 and half.returncode == 0, (whole.stderr + half.stderr)[-3000:]
    (ckpt,) = glob.glob(os.path.join(str(tmp_path / "split"), "*", "checkpoint.pt"))
    rest = run_script(script, "--resume", ckpt, "--total-timesteps", "120")
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert "at step 60 with 60 transitions" in rest.stdout

    whole_state = assert_same_run(str(tmp_path / "whole"), str(tmp_path / "split"))
    assert whole_state["counters"]["global_step"] == 120 and whole_state["counters"]["updates"] == (120 - 40) // 2 + 1
    assert [s for s, _ in read_scalars(str(tmp_path / "whole"))["eval/episodic_return"]] == [60, 120]
    if script == "som.py":  # a checkpoint also loads as a policy (scripts/evaluate.py), one step or through the flow
        for flow_steps in (1, 4):
            policy, args = som.load_policy(ckpt, num_candidates=2, flow_steps=flow_steps)
            actions = policy(torch.zeros(5, 1))
            assert args.env_id == bandit.ENV_ID and actions.shape == (5, 2) and actions.abs().max() <= 1


@pytest.mark.parametrize("script", ["som.py", "nc_lql.py"])
def test_a_resume_without_the_buffer_refills_it_before_updating_again(script, tmp_path):
    """A checkpoint without the buffer (60 steps, 11 updates) resumes into an empty one: the policy collects until it
    holds --learning-starts (40) transitions again, at step 100, and only then do the updates go on, one per vector
    step (2 envs), instead of hundreds of updates on the first few rows."""
    cli = [arg for arg in BANDIT if arg != "--checkpoint-buffer"] + BANDIT_EXTRA[script]
    half = run_script(script, *cli, "--total-timesteps", "60", "--run-dir", str(tmp_path))
    assert half.returncode == 0, half.stderr[-3000:]
    (ckpt,) = glob.glob(os.path.join(str(tmp_path), "*", "checkpoint.pt"))
    rest = run_script(script, "--resume", ckpt, "--total-timesteps", "120")
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert "at step 60 with 0 transitions" in rest.stdout
    assert read_scalars(str(tmp_path))["charts/updates"] == [(20, 0), (40, 1), (60, 11), (80, 11), (100, 12), (120, 22)]


# som.main with its actor loss turned NaN from the 31st update on, as `python -c PATCH <cli>`
NAN_ACTOR_LOSS = """
import sys, som
real, calls = som.actor_loss, [0]
def actor_loss(*args, **kwargs):
    calls[0] += 1
    loss, info = real(*args, **kwargs)
    return (loss * float("nan") if calls[0] > 30 else loss), info
som.actor_loss = actor_loss
som.main(sys.argv[1:])
"""


def _run_patched(code: str, *cli: str) -> subprocess.CompletedProcess:
    env = script_env()
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env["PYTHONPATH"]])
    return subprocess.run([sys.executable, "-c", code, *cli], capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.parametrize(
    "script,cause,name",
    [
        ("som.py", "odd_envs:NanReward-v0", "rewards"),
        ("nc_lql.py", "odd_envs:NanReward-v0", "rewards"),
        ("som.py", "odd_envs:NanAfterReset-v0", "actions"),
        ("nc_lql.py", "odd_envs:NanAfterReset-v0", "actions"),
        ("som.py", "actor loss", "losses/actor_loss"),
    ],
)
def test_nan_stops_with_exit_1_and_the_last_good_state_resumes(script, cause, name, tmp_path):
    """A NaN reward (refused before it enters the buffer), a NaN observation (the action taken on it) or a NaN actor
    loss stops the run with exit status 1 and one sentence naming it; last_good_checkpoint.pt holds finite networks
    and --resume continues from it."""
    runs = str(tmp_path / "runs")
    env_id = "Pendulum-v1" if cause == "actor loss" else cause
    cli = ["--env-id", env_id, *TINY[script], "--total-timesteps", "2000", "--checkpoint-buffer", "--run-dir", runs]
    proc = _run_patched(NAN_ACTOR_LOSS, *cli) if cause == "actor loss" else run_script(script, *cli)
    assert proc.returncode == 1, proc.stderr[-2000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert f"error: {name} became NaN or inf at step" in line and "last_good_checkpoint.pt" in line
    assert "Traceback" not in proc.stderr
    (path,) = glob.glob(os.path.join(runs, "*", "last_good_checkpoint.pt"))
    state = torch.load(path, weights_only=False)
    assert all(torch.isfinite(p).all() for module in state["modules"].values() for p in module.values())
    stopped_at = state["counters"]["global_step"]
    resumed = run_script(script, "--resume", path, "--total-timesteps", str(stopped_at + 20))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {path} at step {stopped_at}" in resumed.stdout


@pytest.mark.parametrize("script", ["som.py", "nc_lql.py"])
@pytest.mark.parametrize(
    "cli,message",
    [
        (["--env-id", "odd_envs:UnboundedAction-v0"], "unbounded action space"),
        (["--env-id", "no_such_module:Env-v0"], "could not import module 'no_such_module'"),
        (["--env-id", "Pendulum-v1", "--total-timesteps", "0"], "--total-timesteps must be positive"),
        (["--env-id", "Pendulum-v1", "--batch-size", "-4"], "--batch-size must be positive"),
        (["--env-id", "Pendulum-v1", "--checkpoint-frequency", "0"], "--checkpoint-frequency must be positive"),
        (["--env-id", "Pendulum-v1", "--run-dir", "/proc/no/such/place"], "cannot write the run directory"),
        (["--env-id", "Pendulum-v1", "--resume", "/nonexistent.pt"], "no such file"),
        (["--resume", "BAD/corrupt.pt"], "is not a saved model or checkpoint"),
        (["--resume", "BAD/not_ours.pt"], "is not a saved model or checkpoint of som.py or nc_lql.py"),
    ],
)
def test_more_bad_input(script, cli, message, tmp_path):
    (tmp_path / "BAD").mkdir()
    (tmp_path / "BAD" / "corrupt.pt").write_bytes(b"PK\x03\x04 not really a zip file")
    torch.save([1, 2, 3], str(tmp_path / "BAD" / "not_ours.pt"))
    proc = run_script(script, *[x.replace("BAD", str(tmp_path / "BAD")) for x in cli])
    assert_one_sentence_error(proc, message)


def test_checkpoints_from_another_script_or_env_are_refused(tmp_path):
    runs = str(tmp_path)
    proc = run_script("som.py", "--env-id", "Pendulum-v1", *SOM_TINY, "--total-timesteps", "120",
                      "--checkpoint-frequency", "120", "--eval-frequency", "120", "--run-dir", runs)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (ckpt,) = glob.glob(os.path.join(runs, "*", "checkpoint.pt"))
    other_script = run_script("nc_lql.py", "--env-id", "Pendulum-v1", "--resume", ckpt)
    assert other_script.returncode != 0 and "written by som, not by nc_lql" in other_script.stderr
    other_env = run_script("som.py", "--env-id", "Hopper-v4", "--resume", ckpt)
    assert_one_sentence_error(other_env, "trained on Pendulum-v1, not Hopper-v4; leave out --env-id to continue it.")
    other_flag = run_script("som.py", "--resume", ckpt, "--seed", "7")
    assert_one_sentence_error(other_flag, "--seed 7 contradicts")
