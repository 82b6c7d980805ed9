"""The --compile path computes the same math as the eager functions, on the same inputs with the same randomness,
and a compiled run is deterministic, saves a model and checkpoints that load and resume in either mode.

Randomness: the NC-LQL sampler takes its draws as an argument (`langevin_noise`); elsewhere inductor's
`fallback_random` makes compiled code draw from torch's generator exactly as eager code does. Compiling costs tens
of seconds per graph on 2 CPU cores, so the networks are small and the samplers short; the math is the same.
"""

import copy
import glob
import os

import pytest
import torch
import torch._inductor.config as inductor_config
from helpers import assert_same_run, read_scalars, run_script

import common
import nc_lql
import som
from scripts import bandit

CPU = torch.device("cpu")


def compiled(fn):
    return common.compile_hot(fn, CPU)


@pytest.fixture
def same_randomness():
    """Compiled code draws its random numbers from torch's generator, in eager's order."""
    with inductor_config.patch(fallback_random=True):
        yield


def assert_params_close(a: torch.nn.Module, b: torch.nn.Module, tol: float = 1e-4) -> None:
    """Float rounding differs between the kernels by far less than 1e-4; a wrong gradient would move the parameters
    by more (SGD steps of lr 0.05 on gradients of order 0.01 to 1)."""
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=tol, rtol=tol, msg=lambda m, name=name: f"{name}: {m}")


def test_mish_with_one_exp_equals_torch_mish_and_its_gradient():
    x = torch.linspace(-40.0, 40.0, 40_001, dtype=torch.float32)
    mish = common.mish
    torch.testing.assert_close(compiled(mish)(x), torch.nn.functional.mish(x), atol=2e-6, rtol=1e-6)
    grad_of = lambda f: torch.func.grad(lambda v: f(v).sum())  # noqa: E731
    torch.testing.assert_close(compiled(grad_of(mish))(x), grad_of(torch.nn.functional.mish)(x), atol=1e-5, rtol=1e-5)


def test_nc_lql_sampler_compiled_equals_eager_on_the_same_draws():
    torch.manual_seed(0)
    critic = nc_lql.NoiseConditionedTwinCritic(5, 3, 64, 2)
    args = nc_lql.Args(num_levels=4, steps_per_level=2, num_chains=3)
    obs = torch.randn(7, 5)
    noise = nc_lql.langevin_noise(3, 7, 3, 8, "cpu")
    with torch.no_grad():
        eager = nc_lql.sample_actions(critic, obs, args, 3, noise)
        fast = compiled(nc_lql.sample_actions)(critic, obs, args, 3, noise)
    torch.testing.assert_close(fast, eager, atol=1e-4, rtol=1e-4)
    assert not torch.equal(eager, noise[0][0])  # the chains moved


def test_som_acting_and_score_estimate_compiled_equal_eager(same_randomness):
    torch.manual_seed(0)
    args = som.Args(hidden_dim=64, num_hidden=2, num_mc_samples=16)
    actor, critic = som.build_networks(args, 5, 3, CPU)
    obs = torch.randn(6, 5)
    act = compiled(som.sample_actions)
    with torch.no_grad():
        for n in (1, 8):
            torch.manual_seed(n)
            eager = som.sample_actions(actor, critic, obs, n)
            torch.manual_seed(n)
            torch.testing.assert_close(act(actor, critic, obs, n), eager, atol=1e-5, rtol=1e-5)

        noised, t = torch.randn(6, 3), torch.rand(6, 1) * 0.9 + 0.05

        def score(o, a, t_):
            return som.score_estimate(lambda s, x: critic(s, x).mean(0), o, a, t_, args.num_mc_samples, args.alpha,
                                      args.beta_min, args.beta_max)[0]  # fmt: skip

        torch.manual_seed(3)
        eager = score(obs, noised, t)
        torch.manual_seed(3)
        torch.testing.assert_close(compiled(score)(obs, noised, t), eager, atol=1e-4, rtol=1e-4)


def _batch(obs_dim: int, act_dim: int, size: int = 32):
    g = torch.Generator().manual_seed(5)
    return (torch.randn(size, obs_dim, generator=g), torch.rand(size, act_dim, generator=g) * 2 - 1,
            torch.randn(size, generator=g), torch.randn(size, obs_dim, generator=g),
            (torch.rand(size, generator=g) < 0.1).float())  # fmt: skip


UPDATES = 3  # several steps of plain SGD: every parameter moves by lr * its gradient, so magnitudes must agree


def _updated(update, *args):
    """update(*args) UPDATES times from seed 7; returns the last update's info."""
    torch.manual_seed(7)
    for _ in range(UPDATES):
        info = update(*args)
    return info


def assert_infos_close(fast: dict, eager: dict) -> None:
    for key in eager:
        torch.testing.assert_close(fast[key], eager[key], atol=1e-4, rtol=1e-4, msg=lambda m, key=key: f"{key}: {m}")


def test_nc_lql_full_update_compiled_equals_eager(same_randomness):
    torch.manual_seed(0)
    args = nc_lql.Args(num_levels=3, steps_per_level=1, batch_size=32)
    critic, target = nc_lql.NoiseConditionedTwinCritic(5, 3, 64, 2), nc_lql.NoiseConditionedTwinCritic(5, 3, 64, 2)
    sigmas = torch.tensor(nc_lql.noise_schedule(3, args.sigma_max, args.sigma_min))
    batch = _batch(5, 3)
    results = []
    for hot in (nc_lql.hot_paths(), nc_lql.hot_paths(compile=True)):
        c, t = copy.deepcopy(critic), copy.deepcopy(target)
        opt = torch.optim.SGD(c.parameters(), lr=0.05)
        results.append((c, _updated(nc_lql.critic_update, args, batch, c, t, opt, sigmas, 3, hot)))
    (eager, eager_info), (fast, fast_info) = results
    assert_params_close(fast, eager)
    assert not torch.equal(eager.obs_in.weight, critic.obs_in.weight)  # the update moved the critics
    assert_infos_close(fast_info, eager_info)


def _som_update(args, batch, actor, critic, critic_target, actor_opt, critic_opt, hot) -> dict:
    info = som.critic_update(args, batch, actor, critic, critic_target, critic_opt, hot)
    return {**info, **som.actor_update(args, batch, actor, critic, actor_opt, hot)}


def test_som_full_update_compiled_equals_eager(same_randomness):
    torch.manual_seed(0)
    args = som.Args(hidden_dim=64, num_hidden=2, num_mc_samples=16, num_candidates=4, num_target_candidates=4)
    actor, critic = som.build_networks(args, 5, 3, CPU)
    target = copy.deepcopy(critic)
    batch = _batch(5, 3)
    results = []
    for hot in (som.hot_paths(), som.hot_paths(compile=True)):
        a, c, t = copy.deepcopy(actor), copy.deepcopy(critic), copy.deepcopy(target)
        a_opt, c_opt = torch.optim.SGD(a.parameters(), lr=0.05), torch.optim.SGD(c.parameters(), lr=0.05)

        results.append((a, c, _updated(_som_update, args, batch, a, c, t, a_opt, c_opt, hot)))
    (a_eager, c_eager, eager_info), (a_fast, c_fast, fast_info) = results
    assert_params_close(c_fast, c_eager)
    assert_params_close(a_fast, a_eager)
    assert_infos_close(fast_info, eager_info)


# ---------------------------------------------------------------------------------------------- whole runs, --compile

TINY = ["--env-id", bandit.ENV_ID, "--num-envs", "2", "--learning-starts", "100", "--batch-size", "32",
        "--eval-frequency", "100", "--eval-episodes", "3", "--log-frequency", "50", "--hidden-dim", "32",
        "--checkpoint-frequency", "100", "--checkpoint-buffer", "--no-cuda"]  # fmt: skip
SCRIPT_TINY = {"som.py": ["--num-mc-samples", "8", "--num-candidates", "4"],
               "nc_lql.py": ["--num-levels", "3", "--steps-per-level", "1"]}  # fmt: skip


@pytest.mark.parametrize("script", ["som.py", "nc_lql.py"])
def test_compiled_run_is_deterministic_resumes_exactly_and_continues_in_eager_mode(script, tmp_path):
    """On the bandit (no state inside an episode): 200 compiled steps in one go, and 100 compiled steps then --resume
    to 200, end in the same state bit for bit (the second and third processes hit inductor's cache)."""
    cli = [*TINY, *SCRIPT_TINY[script], "--compile", "--save-model"]
    whole = run_script(script, *cli, "--total-timesteps", "200", "--run-dir", str(tmp_path / "a"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    # acting (2 envs), evaluation (3 episodes; SOM: N and N = 1) and the update's hot functions, once each
    expected = {"som.py": 6, "nc_lql.py": 5}[script]
    assert f"torch.compile built {expected} graphs" in whole.stdout, whole.stdout[-2000:]
    half = run_script(script, *cli, "--total-timesteps", "100", "--run-dir", str(tmp_path / "b"))
    assert half.returncode == 0, half.stderr[-3000:]
    (checkpoint,) = glob.glob(str(tmp_path / "b" / "*" / "checkpoint.pt"))
    rest = run_script(script, "--resume", checkpoint, "--total-timesteps", "200")
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert_same_run(str(tmp_path / "a"), str(tmp_path / "b"))

    # the compiled run's checkpoint continues eagerly, and its saved model loads in plain PyTorch
    (checkpoint,) = glob.glob(str(tmp_path / "a" / "*" / "checkpoint.pt"))
    proc = run_script(script, "--resume", checkpoint, "--total-timesteps", "300", "--no-compile")
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [s for s, _ in read_scalars(str(tmp_path / "a"))["eval/episodic_return"]]
    assert steps == [100, 200, 300]
    (model,) = glob.glob(str(tmp_path / "a" / "*" / f"{os.path.splitext(script)[0]}.pt"))
    policy, _ = (som if script == "som.py" else nc_lql).load_policy(model)
    actions = policy(torch.zeros(3, 1))
    assert actions.shape == (3, 2) and actions.abs().max() <= 1.0


def test_cuda_graphs_only_with_cudagraphs_on_a_cuda_device(monkeypatch):
    """--compile on CUDA is plain torch.compile; --cudagraphs adds inductor's CUDA graphs (CPU: the C++ wrapper)."""
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, dynamic, options: seen.append(options) or fn)
    for device, cudagraphs in (("cpu", False), ("cuda", False), ("cuda", True)):
        common.compile_hot(len, torch.device(device), cudagraphs)
    assert [sorted(k for k, v in o.items() if v is True) for o in seen] == [["cpp_wrapper"], [], ["triton.cudagraphs"]]
