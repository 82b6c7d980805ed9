"""SOM: the math against analytic answers, the env loop, smoke runs, determinism, bad input, and learning."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import assert_one_sentence_error, read_scalars, run_script

import common
import som
from scripts import bandit

BETA_MIN, BETA_MAX = 0.1, 20.0


# -------------------------------------------------------------------------------------------------- VP schedule
def test_vp_schedule_identities():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    mu, sigma = som.vp_mu_sigma(t, BETA_MIN, BETA_MAX)
    torch.testing.assert_close(mu**2 + sigma**2, torch.ones_like(t))
    assert mu[0] == 1.0 and sigma[0] == 0.0
    assert math.isclose(mu[-1].item(), math.exp(-0.5 * (BETA_MIN + 0.5 * (BETA_MAX - BETA_MIN))), rel_tol=1e-12)
    beta = som.vp_beta(t, BETA_MIN, BETA_MAX)
    assert beta[0] == BETA_MIN and beta[-1] == BETA_MAX
    # d/dt log mu(t) = -beta(t) / 2, checked by central differences
    h = 1e-6
    t_mid = t[1:-1]
    dlogmu = (torch.log(som.vp_mu_sigma(t_mid + h, BETA_MIN, BETA_MAX)[0])
              - torch.log(som.vp_mu_sigma(t_mid - h, BETA_MIN, BETA_MAX)[0])) / (2 * h)  # fmt: skip
    torch.testing.assert_close(dlogmu, -0.5 * som.vp_beta(t_mid, BETA_MIN, BETA_MAX), rtol=1e-6, atol=1e-6)


# -------------------------------------------------------------------------------------------------- score estimate
def _quadratic_q(center):
    def q_fn(obs, actions):  # Q(s, a) = -|a - c|^2 / 2, so exp(Q / alpha) = N(c, alpha I)
        return -0.5 * ((actions - center) ** 2).sum(-1)

    return q_fn


def _exact_gaussian_score(noised, t, center, alpha):
    """Boltzmann N(c, alpha I) noised by the VP kernel is N(mu c, (mu^2 alpha + sigma^2) I)."""
    mu, sigma = som.vp_mu_sigma(t, BETA_MIN, BETA_MAX)
    return -(noised - mu * center) / (mu**2 * alpha + sigma**2)


@pytest.mark.parametrize(
    "estimator,alpha,t_value",
    [("idem", 0.25, 0.05), ("idem", 0.25, 0.3)] + [("tweedie", 0.01, t) for t in (0.05, 0.3, 0.7, 1.0)],
)
def test_score_estimate_matches_exact_gaussian_score(estimator, alpha, t_value):
    # For tweedie the Boltzmann density lives on the box: alpha = 0.01 (std 0.1) keeps it 7 std inside, so the
    # untruncated Gaussian answer is exact to many digits. The idem form is only checked where it is usable: its
    # error grows to 28% at t = 0.5 and 340% at t = 0.7 even with K = 20,000 (docs/som_studies.md), which is why it is
    # not the default.
    torch.manual_seed(0)
    batch, dim = 64, 2
    center = torch.tensor([0.2, -0.1])
    t = torch.full((batch, 1), t_value)
    mu, sigma = som.vp_mu_sigma(t, BETA_MIN, BETA_MAX)
    noised = mu * (center + math.sqrt(alpha) * torch.randn(batch, dim)) + sigma * torch.randn(batch, dim)
    score, info = som.score_estimate(_quadratic_q(center), torch.zeros(batch, 3), noised, t, 20_000, alpha,
                                     BETA_MIN, BETA_MAX, estimator=estimator, q_norm="none")  # fmt: skip
    exact = _exact_gaussian_score(noised, t, center, alpha)
    rel_err = (score - exact).norm(dim=-1).mean() / exact.norm(dim=-1).mean()
    assert rel_err < 0.08, f"relative error {rel_err:.3f}"
    assert score.shape == noised.shape and score.dtype == noised.dtype and score.device == noised.device
    assert not score.requires_grad and 1.0 <= info["softmax_ess"] <= 20_000


@pytest.mark.parametrize("t_value", [0.01, 0.05, 0.3, 0.7, 1.0])
def test_uniform_q_norm_targets_one_boltzmann_policy_at_every_t(t_value):
    """--q-norm uniform scales Q by its spread over uniform actions, once per state: with w = 1 the target velocity is
    the exact PF-ODE velocity of exp(Q / (alpha std_U(Q))) at every t. The per-state form (the spread among each
    noised action's proposals, which shrinks as t -> 0) targets another density at small t."""
    torch.manual_seed(0)
    batch, dim, alpha = 64, 2, 0.03
    center = torch.tensor([0.2, -0.1])
    q_fn = _quadratic_q(center)
    obs = torch.zeros(batch, 3)
    _, q_uniform, stats = som.uniform_q_stats(q_fn, obs, 20_000, dim)
    torch.testing.assert_close(stats[0], q_uniform.mean(0, keepdim=True))
    torch.testing.assert_close(stats[1], q_uniform.std(0, keepdim=True))
    temperature = alpha * stats[1].mean().item()  # the Boltzmann N(c, temperature I), 10 std inside the box
    t = torch.full((batch, 1), t_value)
    mu, sigma = som.vp_mu_sigma(t, BETA_MIN, BETA_MAX)
    noised = mu * (center + math.sqrt(temperature) * torch.randn(batch, dim)) + sigma * torch.randn(batch, dim)
    exact = som.target_velocity(noised, _exact_gaussian_score(noised, t, center, temperature), t, 1.0, BETA_MIN,
                                BETA_MAX)  # fmt: skip

    def velocity(q_norm):
        score, _ = som.score_estimate(q_fn, obs, noised, t, 20_000, alpha, BETA_MIN, BETA_MAX, q_norm=q_norm,
                                      uniform_stats=stats)  # fmt: skip
        return som.target_velocity(noised, score, t, 1.0, BETA_MIN, BETA_MAX)

    rel_err = lambda v: ((v - exact).norm(dim=-1).mean() / exact.norm(dim=-1).mean()).item()  # noqa: E731
    assert rel_err(velocity("uniform")) < 0.05
    if t_value == 0.01:  # the per-state form's temperature has shrunk here: off by more than the velocity itself
        assert rel_err(velocity("state")) > 1.0


def test_boltzmann_draws_follow_the_softmax_over_the_uniform_actions():
    """Gumbel-max over K uniform actions draws from exp(Q / alpha) on the box as K grows: Q(a) = a in 1-D, alpha 0.5,
    whose truncated-exponential density has mean coth(1 / alpha) - alpha."""
    torch.manual_seed(0)
    actions = 2.0 * torch.rand(2_000, 4_000, 1) - 1.0  # K = 2,000 per state, 4,000 states
    draws = som.boltzmann_draws(actions, actions[..., 0], 0.5)
    assert draws.shape == (4_000, 1) and draws.abs().max() <= 1.0
    exact_mean = 1.0 / math.tanh(2.0) - 0.5
    assert abs(draws.mean().item() - exact_mean) < 0.02
    assert abs(som.boltzmann_draws(actions, actions[..., 0], 0.01).mean().item() - (1.0 - 0.01)) < 0.01  # greedy


def test_tweedie_score_tends_to_minus_a_at_t_one():
    torch.manual_seed(0)
    noised = torch.randn(32, 3)
    t = torch.ones(32, 1)
    score, _ = som.score_estimate(_quadratic_q(torch.zeros(3)), torch.zeros(32, 1), noised, t, 64, 0.1,
                                  BETA_MIN, BETA_MAX)  # fmt: skip
    torch.testing.assert_close(score, -noised, atol=0.02, rtol=0.02)
    velocity = som.target_velocity(noised, score, t, 1.0, BETA_MIN, BETA_MAX)
    assert velocity.abs().max() < 0.3  # the PF-ODE barely moves at the noise end


def test_truncated_normal_matches_analytic_moments_and_stays_in_box():
    torch.manual_seed(0)
    mean, std = torch.tensor([[0.3, -0.8]]), torch.tensor([[0.5, 0.2]])
    x = som.truncated_normal_in_box(mean, std, 200_000)
    assert x.shape == (200_000, 1, 2) and x.abs().max() <= 1.0
    m, s = mean.double(), std.double()
    a, b = (-1 - m) / s, (1 - m) / s
    pdf = lambda z: torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)  # noqa: E731
    z = torch.special.ndtr(b) - torch.special.ndtr(a)
    exact_mean = m + s * (pdf(a) - pdf(b)) / z
    exact_var = s**2 * (1 + (a * pdf(a) - b * pdf(b)) / z - ((pdf(a) - pdf(b)) / z) ** 2)
    torch.testing.assert_close(x.double().mean(0), exact_mean, atol=4e-3, rtol=0)
    torch.testing.assert_close(x.double().var(0), exact_var, atol=4e-3, rtol=0)
    # extreme proposals: std 150 (t = 1) is almost uniform; a mean far outside with a tiny std sits on the face
    wide = som.truncated_normal_in_box(torch.tensor([[40.0]]), torch.tensor([[150.0]]), 50_000)
    assert abs(wide.mean().item()) < 0.05 and abs(wide.var().item() - 1 / 3) < 0.02
    far = som.truncated_normal_in_box(torch.tensor([[-5.0]]), torch.tensor([[1e-3]]), 100)
    assert torch.isfinite(far).all() and torch.allclose(far, torch.tensor(-1.0))


# -------------------------------------------------------------------------------------------------- MeanFlow
def _actor(obs_dim=3, act_dim=2):
    torch.manual_seed(0)
    return som.MeanFlowActor(obs_dim, act_dim, 64, 2).double()


def test_jvp_du_dt_matches_central_finite_differences():
    actor = _actor()
    obs, a = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    t = torch.rand(8, 1, dtype=torch.float64) * 0.8 + 0.1
    r = t * torch.rand(8, 1, dtype=torch.float64)
    v = torch.randn(8, 2, dtype=torch.float64)
    _, du_dt = som.meanflow_target(actor, obs, a, r, t, v)
    h = 1e-5
    with torch.no_grad():
        fd = (actor(obs, a + h * v, r, t + h) - actor(obs, a - h * v, r, t - h)) / (2 * h)
    torch.testing.assert_close(du_dt, fd, rtol=1e-6, atol=1e-8)


class _ExactDecayMeanFlow(nn.Module):
    """The exact average velocity of the flow dz/dt = -z (+ `error`): u(z_t, r, t) = -z_t (e^h - 1) / h, h = t - r."""

    act_dim = 2

    def __init__(self, error=0.0):
        super().__init__()
        self.error = error

    def forward(self, obs, a, r, t):
        h = t - r
        factor = torch.where(h > 1e-4, torch.expm1(h) / h.clamp_min(1e-4), 1 + h / 2 + h**2 / 6)
        return -a * factor + self.error


def test_meanflow_loss_is_zero_for_the_exact_average_velocity():
    torch.manual_seed(0)
    a, obs = torch.randn(64, 2, dtype=torch.float64), torch.zeros(64, 1, dtype=torch.float64)
    t = torch.rand(64, 1, dtype=torch.float64)
    r = t * torch.rand(64, 1, dtype=torch.float64)
    loss, _ = som.meanflow_loss(_ExactDecayMeanFlow(), obs, a, r, t, velocity=-a)
    assert loss < 1e-6
    # an error of 0.1 per coordinate, d = 0.01: about d / (d + 1e-3) = 0.91 at p = 1, d / sqrt(d + 1e-3) = 0.095 at 0.5
    loss_wrong, _ = som.meanflow_loss(_ExactDecayMeanFlow(error=0.1), obs, a, r, t, velocity=-a, adaptive_power=1.0)
    assert loss_wrong > 0.5


def test_meanflow_loss_is_zero_for_a_constant_field_and_trains_toward_it():
    actor = _actor()
    c = torch.tensor([0.3, -0.7], dtype=torch.float64)
    with torch.no_grad():  # make u(s, a, r, t) = c exactly: zero last layer, bias c
        actor.out.weight.zero_()
        actor.out.bias.copy_(c)
    obs, a = torch.randn(32, 3, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)
    t = torch.rand(32, 1, dtype=torch.float64)
    r = t * torch.rand(32, 1, dtype=torch.float64)
    loss, _ = som.meanflow_loss(actor, obs, a, r, t, c.expand(32, 2))
    assert loss.item() == 0.0
    loss_other, _ = som.meanflow_loss(actor, obs, a, r, t, (c + 1).expand(32, 2))
    assert loss_other > 0.9


def test_flow_sample_follows_the_exact_average_velocity_in_any_number_of_steps():
    """dz/dt = -z carries z_1 to z_0 = e z_1; MeanFlow steps with its exact average velocity land there in 1 or 8
    (noise within 0.3 of 0, so e z_1 stays inside the box and the clip does nothing)."""
    noise = torch.rand(1, 16, 2, dtype=torch.float64) * 0.6 - 0.3  # one candidate per state
    obs = torch.zeros(16, 1, dtype=torch.float64)
    for steps in (1, 3, 8):
        z0 = som.flow_sample(_ExactDecayMeanFlow(), obs, 1, steps, noise)
        torch.testing.assert_close(z0, math.e * noise)
    z0 = som.flow_sample(_ExactDecayMeanFlow(error=0.1), obs, 1, 1, noise)  # a constant error of 0.1 in u
    torch.testing.assert_close(z0, math.e * noise - 0.1)
    torch.testing.assert_close(
        som.flow_sample(_ExactDecayMeanFlow(), obs, 1, 8, noise * 3), (math.e * 3 * noise).clamp(-1, 1)
    )


def test_time_pairs_are_ordered_and_in_range():
    r, t = som.sample_time_pair(10_000, 1e-3, 0.25, "cpu")
    assert r.shape == t.shape == (10_000, 1)
    assert (r <= t).all() and (r >= 0).all() and (t >= 1e-3).all() and (t <= 1 - 1e-3).all()
    assert 0.2 < (r == t).float().mean() < 0.3
    assert abs(t.mean().item() - 0.5) < 0.02 and abs((r / t)[r < t].mean().item() - 0.5) < 0.02  # U[0, t]


# -------------------------------------------------------------------------------------------------- acting
class _FixedCritic(nn.Module):
    def forward(self, obs, actions):  # Q1 = -|a - 0.5|^2, Q2 = Q1 - 0.1 a_0
        q1 = -((actions - 0.5) ** 2).sum(-1)
        return torch.stack([q1, q1 - 0.1 * actions[..., 0]])


def _plain_mlp(first_weights, first_bias, hidden, out):
    """An MLP with Mish on the concatenated input, from (in, out)-shaped weights: the reference for the split layers."""

    def forward(x):
        h = nn.functional.mish(x @ torch.cat(first_weights, dim=0) + first_bias)
        for w, b in hidden:
            h = nn.functional.mish(h @ w + b)
        return h @ out[0] + out[1]

    return forward


def test_networks_with_a_split_first_layer_equal_plain_mlps_on_the_concatenated_input():
    """TwinCritic is two independent MLPs on [s, a], MeanFlowActor one MLP on [s, a, emb(t), emb(t - r)]; the state's
    share of the first layer is computed once for all N candidates of a state, and the result is the same."""
    torch.manual_seed(0)
    critic, actor = som.TwinCritic(3, 2, 8, 3), som.MeanFlowActor(3, 2, 8, 3)
    obs, actions = torch.randn(5, 3), torch.rand(4, 5, 2) * 2 - 1  # 4 candidates for each of 5 states
    with torch.no_grad():
        q = critic(obs, actions)  # (2, 4, 5)
        for j in range(2):
            plain = _plain_mlp([critic.obs_in.weight[j], critic.action_in.weight[j]], critic.obs_in.bias[j],
                               [(layer.weight[j], layer.bias[j]) for layer in critic.hidden],
                               (critic.out.weight[j], critic.out.bias[j]))  # fmt: skip
            torch.testing.assert_close(q[j], plain(torch.cat([obs.expand(4, 5, 3), actions], -1)).squeeze(-1))
        r, t = torch.rand(4, 5, 1) * 0.5, 0.5 + torch.rand(4, 5, 1) * 0.5
        times = torch.cat([som.time_embedding(t), som.time_embedding(t - r)], -1)
        plain = _plain_mlp(
            [actor.obs_in.weight.T, actor.action_in.weight.T, actor.time_in.weight.T],
            actor.obs_in.bias,
            [(layer.weight.T, layer.bias) for layer in actor.hidden],
            (actor.out.weight.T, actor.out.bias),
        )
        torch.testing.assert_close(
            actor(obs, actions, r, t), plain(torch.cat([obs.expand(4, 5, 3), actions, times], -1))
        )
    # initialised as one nn.Linear on the concatenation: every first-layer weight within 1 / sqrt(S + A (+ 32))
    critic_bound, actor_bound = 1 / math.sqrt(3 + 2), 1 / math.sqrt(3 + 2 + 32)
    assert critic.action_in.weight.abs().max() <= critic_bound and actor.time_in.weight.abs().max() <= actor_bound
    assert critic.action_in.weight.abs().max() > 0.8 * critic_bound


def test_one_step_sampling_shapes_bounds_and_best_of_n():
    actor = som.MeanFlowActor(3, 2, 32, 2)
    obs = torch.randn(5, 3)
    with torch.no_grad():
        cands = som.flow_sample(actor, obs, 16)
        assert cands.shape == (16, 5, 2) and cands.abs().max() <= 1.0
        torch.manual_seed(1)
        cands = som.flow_sample(actor, obs, 16)
        torch.manual_seed(1)
        chosen = som.sample_actions(actor, _FixedCritic(), obs, 16)
    q = _FixedCritic()(obs, cands).min(0).values  # (16, 5)
    expected = cands[q.argmax(0), torch.arange(5)]
    torch.testing.assert_close(chosen, expected)
    assert chosen.shape == (5, 2)


def test_zero_noise_action_is_the_one_step_map_at_the_noise_mean():
    """u(s, 0, 0, 1) of the decay field with a constant error 0.1 is 0.1 (the decay term vanishes at a = 0), so the
    zero-noise action is -0.1 in every coordinate; and it is one network evaluation, deterministic."""
    obs = torch.randn(5, 3)
    torch.testing.assert_close(som.zero_noise_action(_ExactDecayMeanFlow(error=0.1), obs), torch.full((5, 2), -0.1))
    torch.testing.assert_close(som.zero_noise_action(_ExactDecayMeanFlow(error=-3.0), obs), torch.ones(5, 2))  # clip
    actor = som.MeanFlowActor(3, 2, 32, 2)
    with torch.no_grad():
        torch.testing.assert_close(som.zero_noise_action(actor, obs), som.zero_noise_action(actor, obs))


def test_one_step_q_gap_compares_the_one_step_policy_and_the_flow_from_the_same_noise():
    """For the exact decay field one MeanFlow step lands where 20 do, so with both drawn from the same noise the logged
    one_step_q_gap is zero (to rounding) for any critic; two separate draws would leave Q's sampling spread in it."""
    torch.manual_seed(0)
    critic = som.TwinCritic(3, 2, 32, 2)
    batch = (torch.randn(64, 3), torch.rand(64, 2) * 2 - 1, torch.zeros(64), torch.randn(64, 3), torch.zeros(64))
    info = som.actor_diagnostics(som.Args(num_mc_samples=4), batch, _ExactDecayMeanFlow(), critic)
    assert abs(float(info["losses/one_step_q_gap"])) < 1e-6


def test_flow_step_candidates_follow_the_exact_flow_like_one_step_ones():
    """For the exact decay field (z_0 = e z_1 from noise z_1) one MeanFlow step and eight land on the same point, so
    sample_actions with flow_steps=8 must return the one-step choice: clip(e * noise) from the same noise draws."""
    obs = torch.randn(5, 3)
    torch.manual_seed(3)
    noise = torch.randn(4, 5, 2)
    for flow_steps in (1, 8):
        torch.manual_seed(3)
        chosen = som.sample_actions(_ExactDecayMeanFlow(), _FixedCritic(), obs, 4, flow_steps)
        candidates = (math.e * noise).clamp(-1, 1)
        expected = candidates[_FixedCritic()(obs, candidates).min(0).values.argmax(0), torch.arange(5)]
        torch.testing.assert_close(chosen, expected)


def test_td_target_takes_the_smaller_twin_and_bootstraps_on_truncation_not_termination():
    """Q1 = -|a - 0.5|^2, Q2 = Q1 - 0.1 a_0: at a' = (1, 0.5) Q1 = -0.25, Q2 = -0.35; at a' = (-1, 0.5) Q1 = -2.25,
    Q2 = -2.15. y = 0.2 r + 0.9 (1 - terminated) min(Q1, Q2) = 0.2 - 0.9 0.35, 0.2 - 0.9 2.25, and 0.2 terminated."""
    next_obs, next_a = torch.zeros(3, 1), torch.tensor([[1.0, 0.5], [-1.0, 0.5], [1.0, 0.5]])
    y = som.td_target(_FixedCritic(), next_obs, next_a, torch.ones(3), torch.tensor([0.0, 0.0, 1.0]), 0.9, 0.2)
    torch.testing.assert_close(y, torch.tensor([0.2 - 0.9 * 0.35, 0.2 - 0.9 * 2.25, 0.2]))


class _ConstantCritic(nn.Module):
    def forward(self, obs, actions):
        return torch.full((2, *actions.shape[:-1]), 100.0)


def test_bootstrap_target_evaluates_the_target_critics_at_the_actors_next_action():
    """y uses the target critics (here _FixedCritic), never the online ones (a constant 100), at a' from the actor on
    s' (N = 1: the online critics do not even choose)."""
    torch.manual_seed(0)
    actor = som.MeanFlowActor(3, 2, 32, 2)
    args = som.Args(num_target_candidates=1, gamma=0.9, reward_scale=0.2)
    obs, next_obs = torch.randn(6, 3), torch.randn(6, 3)
    batch = (obs, torch.zeros(6, 2), torch.ones(6), next_obs, torch.zeros(6))
    torch.manual_seed(1)
    with torch.no_grad():
        next_a = som.flow_sample(actor, next_obs, 1)[0]
    torch.manual_seed(1)
    y = som.bootstrap_target(args, batch, actor, _ConstantCritic(), _FixedCritic())
    torch.testing.assert_close(y, 0.2 + 0.9 * _FixedCritic()(next_obs, next_a).min(0).values)


def test_critic_update_regresses_onto_the_target_critics_td_target():
    """critic_update's loss is sum_j mean_b (Q_j(s, a) - y)^2 with y from the TARGET critics (other weights here)."""
    torch.manual_seed(0)
    args = som.Args(num_target_candidates=1, hidden_dim=32, num_hidden=2)
    actor, critic = som.build_networks(args, 3, 2, "cpu")
    critic_target = som.build_networks(args, 3, 2, "cpu")[1]
    batch = (torch.randn(6, 3), torch.rand(6, 2) * 2 - 1, torch.randn(6), torch.randn(6, 3), torch.zeros(6))
    torch.manual_seed(1)
    with torch.no_grad():
        y = som.bootstrap_target(args, batch, actor, critic, critic_target)
        expected = (critic(batch[0], batch[1]) - y).pow(2).mean(1).sum()
    torch.manual_seed(1)
    info = som.critic_update(args, batch, actor, critic, critic_target, torch.optim.SGD(critic.parameters(), lr=0.0))
    torch.testing.assert_close(info["losses/critic_loss"], expected)


# -------------------------------------------------------------------------------------------------- env loop
class _ScriptedEnv(gym.Env):
    """obs = [100 * episode + step]; even episodes terminate at step 3, odd ones run into the 4-step time limit."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
        self.episode = -1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode += 1
        self.t = 0
        return np.array([100.0 * self.episode], np.float32), {}

    def step(self, action):
        self.t += 1
        terminated = self.episode % 2 == 0 and self.t == 3
        return np.array([100.0 * self.episode + self.t], np.float32), 1.0, terminated, False, {}


gym.register("ScriptedEnv-v0", entry_point=_ScriptedEnv, max_episode_steps=4)


def test_env_loop_stores_only_real_transitions():
    envs = common.make_vector_env("ScriptedEnv-v0", 2, seed=0)
    rb = som.ReplayBuffer(100, 1, 1, torch.device("cpu"))
    obs, _ = envs.reset(seed=0)
    returns = []
    for _ in range(20):
        actions = envs.action_space.sample()
        next_obs, rewards, terminated, truncated, infos = envs.step(actions)
        returns += common.finished_episodes(infos)
        rb.add(obs, common.real_next_obs(next_obs, infos), actions, rewards, terminated)
        obs = next_obs
    o, no, term = rb.obs[: rb.size, 0], rb.next_obs[: rb.size, 0], rb.terminated[: rb.size]
    assert rb.size == 40
    torch.testing.assert_close(no, o + 1)  # every stored step is real: no final -> reset pair
    step_reached = no % 100
    episode = torch.div(no, 100, rounding_mode="floor")
    assert ((step_reached == 4) & (episode % 2 == 1)).any()  # truncated: true final obs stored
    torch.testing.assert_close(term, ((step_reached == 3) & (episode % 2 == 0)).float())  # done = terminated only
    assert (rb.actions.abs() <= 1).all()  # the algorithm acts in [-1, 1]; the wrapper rescales to [-2, 2]
    assert sorted(set(returns)) == [(3.0, 3), (4.0, 4)]


# -------------------------------------------------------------------------------------------------- whole runs
TINY = ["--num-envs", "2", "--total-timesteps", "240", "--learning-starts", "120", "--batch-size", "32",
        "--num-mc-samples", "8", "--num-candidates", "4", "--eval-frequency", "240", "--eval-episodes", "2",
        "--log-frequency", "60", "--hidden-dim", "64"]  # fmt: skip


@pytest.mark.parametrize("env_id", ["Hopper-v4", "Humanoid-v4"])
def test_smoke_run_reaches_updates_logs_and_saves(env_id, tmp_path):
    proc = run_script("som.py", "--env-id", env_id, *TINY, "--save-model", "--run-dir", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    scalars = read_scalars(str(tmp_path / "runs"))
    for tag in ("charts/episodic_return", "charts/SPS", "charts/action_bound_fraction", "eval/episodic_return",
                "eval/episodic_return_n1", "eval/episodic_return_zero_noise", "losses/critic_loss", "losses/actor_loss",
                "losses/softmax_ess", "losses/target_norm", "losses/score_length", "losses/du_dt_norm",
                "losses/q_values"):  # fmt: skip
        assert tag in scalars, tag
    assert scalars["charts/updates"][-1][1] == (240 - 120) // 2 + 1  # an update on every vector step from 120 on
    (model,) = list((tmp_path / "runs").glob("*/som.pt"))
    policy, args = som.load_policy(str(model), num_candidates=1)
    obs_dim = gym.make(env_id).observation_space.shape[0]
    actions = policy(torch.randn(3, obs_dim))
    assert actions.shape == (3, gym.make(env_id).action_space.shape[0]) and actions.abs().max() <= 1
    assert args.env_id == env_id


def _eval_and_losses(tmp_path, seed):
    proc = run_script("som.py", "--env-id", "Pendulum-v1", *TINY, "--seed", str(seed), "--run-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = read_scalars(str(tmp_path))
    return [v for _, v in s["eval/episodic_return"] + s["losses/critic_loss"] + s["losses/actor_loss"]]


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path):
    first = _eval_and_losses(tmp_path / "a", 3)
    assert first == _eval_and_losses(tmp_path / "b", 3)
    assert first != _eval_and_losses(tmp_path / "c", 4)


# -------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "cli,message",
    [
        (["--env-id", "Hoper-v4"], "'Hoper-v4' (Environment `Hoper` doesn't exist. Did you mean: `Hopper`?)"),
        (["--env-id", "CartPole-v1"], "Discrete action space"),
        (["--env-id", "Pendulum-v1", "--num-envs", "0"], "--num-envs must be positive"),
        (["--env-id", "Pendulum-v1", "--batch-size", "512", "--learning-starts", "100"], "must not exceed"),
        (["--env-id", "Pendulum-v1", "--eval-frequency", "0"], "--eval-frequency must be positive"),
        (["--env-id", "Pendulum-v1", "--num-mc-samples", "-1"], "--num-mc-samples must be positive"),
        (["--env-id", "Pendulum-v1", "--target-point-fraction", "1.5"], "--target-point-fraction must be in [0, 1]"),
        (["--env-id", "Pendulum-v1", "--cudagraphs"], "--cudagraphs needs --compile"),
        (["--env-id", "Pendulum-v1", "--cudagraphs", "--compile", "--no-cuda"], "--cudagraphs needs a CUDA device"),
    ],
)
def test_bad_input_exits_with_one_sentence(cli, message):
    proc = run_script("som.py", *cli)
    assert_one_sentence_error(proc, message)


def test_loading_a_file_from_another_script_is_refused(tmp_path):
    path = str(tmp_path / "other.pt")
    common.save_atomic({"algorithm": "nc_lql", "args": {"env_id": "Hopper-v4"}}, path)
    with pytest.raises(SystemExit):
        som.load_policy(path)


# -------------------------------------------------------------------------------------------------- learning
THIRD_PARTY_SCORE = {"score_estimator": "idem", "score_norm": True, "q_norm": "batch"}


@pytest.mark.parametrize(
    "fit, floor",
    [pytest.param({}, 0.35, id="default"),
     pytest.param(THIRD_PARTY_SCORE, 0.35, id="third_party_score", marks=pytest.mark.xfail(
         strict=True, raises=AssertionError, reason="the third-party score form puts one-step actions on the edge"))],
)  # fmt: skip
def test_one_step_actor_reaches_its_target_on_a_fixed_analytic_critic(fit, floor):
    """The actor alone, with the exact bandit reward as a fixed critic, sampled ONCE per action after 6,000 compiled
    updates (batch 128, K = 32, lr 2e-3, seed 0). The default fit must reach 0.35; the third-party score form, which
    puts every one-step action on the box edge, must not reach 0.35 (xfail strict: the suite goes red if this test
    stops telling a broken actor apart). What uniform actions, the exact PF-ODE and each fit earn at several seeds
    (scripts/bandit_actor_probe.py): docs/som_studies.md."""
    from scripts.bandit_actor_probe import bandit_reward, train_actor

    torch.set_num_threads(1)
    args = som.Args(batch_size=128, num_mc_samples=32, actor_lr=2e-3, **fit)
    actor = train_actor(args, updates=6000, seed=0, compile=True)
    torch.manual_seed(0)
    with torch.no_grad():
        actions = som.flow_sample(actor, torch.zeros(4000, 1), 1)[0]
    reward = bandit_reward(actions).mean().item()
    assert reward >= floor, f"one-step mean reward {reward:.3f}"


@pytest.mark.slow
def test_som_learns_the_bandit_with_one_step_sampling(tmp_path):
    """Full SOM (critic learned from rewards) acting with N = 1; the saved actor, sampled once, beats random."""
    proc = run_script("som.py", "--env-id", bandit.ENV_ID, "--num-envs", "1", "--learning-starts", "500",
                      "--total-timesteps", "3500", "--batch-size", "64", "--hidden-dim", "64", "--num-mc-samples",
                      "32", "--num-candidates", "1", "--actor-lr", "1e-3", "--critic-lr", "1e-3",
                      "--eval-frequency", "3500", "--eval-episodes", "100", "--save-model", "--run-dir",
                      str(tmp_path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (model,) = list(tmp_path.glob("*/som.pt"))
    policy, _ = som.load_policy(str(model), num_candidates=1)
    reward = bandit.MultimodalBandit.reward(policy(torch.zeros(2000, 1)).numpy()).mean()
    assert reward > 0.2, f"one-step mean reward {reward:.3f} (uniform random: 0.056)"
