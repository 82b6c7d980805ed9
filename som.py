"""SOM: Score-Based One-step MeanFlow Policy Optimization, in one file.

Paper: Kim, Ki, Ahn, Lee, arXiv 2605.23365 (2026). Only its abstract is public and there is no released code: each
reconstructed Args field is tagged [paper] (the abstract), [third-party] (values a public review of the paper reports
from its tables) or [ours]; docs/som.md gives the evidence for each.

The target is a Boltzmann policy of the critic on the action box, pi*(a|s) ~ exp(Qn(s, a) / alpha). Noised by a VP
diffusion, a_t = mu(t) a_0 + sigma(t) eps with beta(t) = beta_min + t (beta_max - beta_min), its probability-flow ODE
    da/dt = v(a_t, t) = -0.5 beta(t) (a_t + w score_t(a_t)),   score_t = grad log p_t(a_t | s)   (w = 1: exact)
carries Gaussian noise at t = 1 to pi* at t = 0. Per update:
1. Score, from K Monte-Carlo proposals and critic forward passes (the posterior-mean, or Tweedie, form):
       a0_k ~ N(a_t / mu, sigma^2 / mu^2) truncated to the box,   w_k = softmax_k(Qn(s, a0_k) / alpha),
       score = (mu sum_k w_k a0_k - a_t) / sigma^2,   Q the mean of the two online critics.
   Qn is Q standardised. Default (--q-norm state): by its mean and std over each noised action's K proposals, a
   spread that shrinks as t -> 0, so each flow time has its own temperature alpha std_K(Q) and v is the PF-ODE of no
   single density. --q-norm uniform: by its std over K uniform actions per state, drawn once per update, one
   temperature for every t, and with w = 1 v is the exact PF-ODE of exp(Q / (alpha std_U(Q | s))). none: Q / alpha.
2. Training points: the batch's replay actions noised to t (--target-point-fraction f: the first f of the rows start
   from a draw of the target instead, one of the K uniform actions picked by softmax_k(Qn / alpha)).
3. MeanFlow: u(s, a, r, t), the AVERAGE velocity over [r, t], fitted to the identity (its right side held fixed)
       u(s, a_t, r, t) = v(a_t, t) - (t - r) d/dt u(s, a_t, r, t).
4. Acting: one network evaluation per candidate, a = clip(eps - u(s, eps, 0, 1), -1, 1). Data: one candidate per
   state. The TD target's a': the best of --num-target-candidates by the online critics' min(Q1, Q2). Evaluated:
   best-of-N (--num-candidates), N = 1, and the zero-noise action clip(-u(s, 0, 0, 1), -1, 1).
5. Critic: y = reward_scale r + gamma (1 - terminated) min_j Qtarget_j(s', a'), no entropy term.
The third party's form, `--score-estimator idem --score-norm --q-norm batch`, is iDEM's estimator (Iterated Denoising
Energy Matching): grad logsumexp_k Q(a_t / mu + (sigma / mu) eps_k) / alpha, unit-normalised and scaled by w.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Literal, Optional

import numpy as np
import torch
import torch.nn as nn
import tyro

import common

ALGORITHM = "som"


@dataclass
class Args(common.RunArgs):  # the run's flags (seed, --cuda, --compile, --track, checkpoints) are common.RunArgs'
    """Train SOM, a one-step MeanFlow policy fitted to the Boltzmann policy of its critic (docs/som.md)."""

    exp_name: str = "som"
    wandb_project_name: str = "som"

    env_id: str = "Hopper-v4"
    """the gymnasium id of a continuous-action environment"""
    total_timesteps: int = 5_000_000
    """environment transitions in total, summed over the parallel envs"""
    num_envs: int = 5
    """parallel environments; one critic and one actor update per vector step"""
    learning_starts: int = 30_000
    """uniform random transitions collected before learning starts"""
    buffer_size: int = 1_000_000
    """replay buffer capacity (transitions)"""
    batch_size: int = 256
    """replay batch size"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """Polyak rate of the target critics"""
    reward_scale: float = 0.2
    """rewards are multiplied by this inside the TD target only (logged returns are raw)"""
    actor_lr: float = 1e-4
    """Adam learning rate of the MeanFlow actor"""
    critic_lr: float = 1e-4
    """Adam learning rate of the critics"""
    hidden_dim: int = 256
    """width of the hidden layers of actor and critics"""
    num_hidden: int = 3
    """number of hidden layers of actor and critics"""
    eval_frequency: int = 125_000
    """evaluate every this many environment transitions"""
    eval_episodes: int = 20
    """episodes per evaluation (stepped as one batch)"""
    log_frequency: int = 5_000
    """log losses and diagnostics every this many environment transitions"""

    # --- SOM ---
    num_mc_samples: int = 100
    """[third-party] K: Monte-Carlo proposals per noised action in the score estimate"""
    beta_min: float = 0.1
    """[third-party] VP schedule: beta(0)"""
    beta_max: float = 20.0
    """[third-party] VP schedule: beta(1)"""
    alpha: float = 0.1
    """[ours] Boltzmann temperature on the normalised Q (see --q-norm), chosen by a sweep (docs/som_studies.md)"""
    score_estimator: Literal["tweedie", "idem"] = "tweedie"
    """[ours] tweedie: posterior-mean score with box-truncated proposals; idem: the gradient of logsumexp_k Q / alpha"""
    q_norm: Literal["state", "uniform", "batch", "none"] = "state"
    """[ours] standardise Q over each noised action's K proposals (state), by its spread over K uniform actions per
    state (uniform: one temperature for every t), over all K x B (batch), or not (none)"""
    target_point_fraction: float = 0.0
    """[ours] share of the actor's training points drawn from the target (Gumbel-max over K uniform actions)"""
    score_norm: bool = False
    """[ours] off; on: unit-normalise the score and multiply by w in the target velocity (the third-party form)"""
    w: float = 1.0
    """[paper] the score's weight in the target velocity -0.5 beta(t) (a_t + w * score): above 1 the flow is pulled
    harder toward Q's modes (and the score's Q-free Gaussian part is scaled too); [ours] 1, the exact PF-ODE"""
    num_candidates: int = 32
    """[paper] N: one-step candidates per decision, the best by min(Q1, Q2) taken (1: the one-step policy); [ours] 32"""
    num_target_candidates: Optional[int] = None
    """[ours] N for the next action a' of the TD target (default: --num-candidates)"""
    num_collect_candidates: Optional[int] = 1
    """[third-party] N while collecting data: 1, the policy's own noise explores (None: --num-candidates)"""
    flow_matching_fraction: float = 0.25
    """[ours] fraction of actor rows with r = t (plain flow matching, as MeanFlow does); else r ~ U[0, t]"""
    adaptive_power: float = 0.5
    """[ours] p of MeanFlow's adaptive loss weight 1 / (err + 1e-3)^p; 0 = plain squared error"""
    t_min: float = 1e-3
    """[ours] flow times are drawn in [t_min, 1 - t_min] (the VP score is singular at t = 0)"""


# ==== VP schedule: beta(t) = beta_min + t (beta_max - beta_min),  a_t = mu(t) a_0 + sigma(t) eps =====================
def vp_beta(t: torch.Tensor, beta_min: float, beta_max: float) -> torch.Tensor:
    return beta_min + t * (beta_max - beta_min)


def vp_mu_sigma(t: torch.Tensor, beta_min: float, beta_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """mu = exp(-0.5 int_0^t beta), sigma = sqrt(1 - mu^2), each shaped like t."""
    log_mu = -0.5 * (beta_min * t + 0.5 * (beta_max - beta_min) * t**2)
    return torch.exp(log_mu), torch.sqrt(-torch.expm1(2.0 * log_mu))  # 1 - mu^2 without cancellation at small t


# ==== Networks ========================================================================================================
def time_embedding(t: torch.Tensor, dim: int = 16, max_freq: float = 20.0) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1], 1 .. max_freq rad (low: a small du/dt in the JVP): (..., 1) -> (.., dim)."""
    angles = t * torch.exp(torch.linspace(0.0, math.log(max_freq), dim // 2, device=t.device, dtype=t.dtype))
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def linear(in_dim: int, out_dim: int, fan_in: int, bias: bool = True) -> nn.Linear:
    """nn.Linear initialised as one with `fan_in` inputs: a first layer split by input starts as one layer would."""
    layer = nn.Linear(in_dim, out_dim, bias=bias)
    for p in layer.parameters():
        nn.init.uniform_(p, -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))
    return layer


class MeanFlowActor(nn.Module):
    """u(s, a, r, t), the flow's average velocity over [r, t]: an MLP with Mish on [s, a, emb(t), emb(t - r)], s (B, S),
    a (N, B, A). Its first layer, input by input (W_s s + b) + W_a a + W_e e, multiplies a shared state once."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, num_hidden: int):
        super().__init__()
        self.act_dim, fan_in = act_dim, obs_dim + act_dim + 32  # 32: emb(t) and emb(t - r), 16 each
        self.obs_in = linear(obs_dim, hidden_dim, fan_in)
        self.action_in = linear(act_dim, hidden_dim, fan_in, bias=False)
        self.time_in = linear(32, hidden_dim, fan_in, bias=False)
        self.hidden = nn.ModuleList(linear(hidden_dim, hidden_dim, hidden_dim) for _ in range(num_hidden - 1))
        self.out = linear(hidden_dim, act_dim, hidden_dim)

    def forward(self, obs, action, r, t):
        times = torch.cat([time_embedding(t), time_embedding(t - r)], dim=-1)
        h = common.mish(self.obs_in(obs) + self.action_in(action) + self.time_in(times))
        for layer in self.hidden:
            h = common.mish(layer(h))
        return self.out(h)


class TwinLinear(nn.Module):
    """One layer of both critics as a (2, in, out) weight, one matmul: x (2 or 1 if shared, .., in) -> (2, .., out)."""

    def __init__(self, in_dim: int, out_dim: int, fan_in: int, bias: bool = True):
        super().__init__()
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = nn.Parameter(torch.empty(2, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(2, 1, out_dim).uniform_(-bound, bound)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # matmul broadcasts an input both critics share (faster compiled than baddbmm on it expanded, docs/speed.md)
        out = torch.matmul(x.reshape(x.shape[0], -1, x.shape[-1]), self.weight)
        out = out if self.bias is None else out + self.bias
        return out.view(2, *x.shape[1:-1], out.shape[-1])


class TwinCritic(nn.Module):
    """Q1 and Q2, MLPs with Mish on [s, a] in one batched call, first layer split: (s (.., S), a (.., A)) -> (2, ..)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, num_hidden: int):
        super().__init__()
        self.obs_in = TwinLinear(obs_dim, hidden_dim, obs_dim + act_dim)
        self.action_in = TwinLinear(act_dim, hidden_dim, obs_dim + act_dim, bias=False)
        self.hidden = nn.ModuleList(TwinLinear(hidden_dim, hidden_dim, hidden_dim) for _ in range(num_hidden - 1))
        self.out = TwinLinear(hidden_dim, 1, hidden_dim)

    def forward(self, obs, action):
        state_part, action_part = self.obs_in(obs[None]), self.action_in(action[None])  # (2, ..., H) each
        # right-align the state's leading dims with the actions' (N, B) so that the sum broadcasts
        state_part = state_part.view(2, *[1] * (action_part.dim() - state_part.dim()), *state_part.shape[1:])
        h = common.mish(state_part + action_part)
        for layer in self.hidden:
            h = common.mish(layer(h))
        return self.out(h).squeeze(-1)


# ==== Replay buffer (tensors on the training device; sampling is one gather) ==========================================
class ReplayBuffer:
    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device):
        self.capacity, self.device, self.size, self.pos = capacity, device, 0, 0
        self.obs, self.next_obs = torch.zeros(2, capacity, obs_dim, device=device)  # two views of one block
        self.actions = torch.zeros(capacity, act_dim, device=device)
        self.rewards, self.terminated = torch.zeros(2, capacity, device=device)

    def add(self, obs, next_obs, actions, rewards, terminated) -> None:
        """Add one vector step (arrays with a leading num_envs dim)."""
        idx = (self.pos + torch.arange(len(obs))) % self.capacity
        for buf, x in ((self.obs, obs), (self.next_obs, next_obs), (self.actions, actions),
                       (self.rewards, rewards), (self.terminated, terminated)):  # fmt: skip
            buf[idx] = torch.as_tensor(np.asarray(x), dtype=torch.float32).to(self.device)
        self.pos = (self.pos + len(obs)) % self.capacity
        self.size = min(self.size + len(obs), self.capacity)

    def sample(self, batch_size: int):
        idx = torch.randint(0, self.size, (batch_size,), device=self.device)
        return self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.terminated[idx]


# ==== 1. Score of the noised Boltzmann policy, estimated from the critic with K Monte-Carlo proposals =================
def truncated_normal_in_box(mean: torch.Tensor, std: torch.Tensor, num_samples: int) -> torch.Tensor:
    """K draws of N(mean, std^2) truncated to [-1, 1] per dimension by inverse-CDF sampling: (B, A) -> (K, B, A)."""
    # float64 (std ~150 at t = 1, tiny near t = 0), mirrored to mean >= 0: the box below the mean keeps CDF precision
    flip = mean < 0
    m, s = mean.double().abs(), std.double().expand_as(mean)
    # the CDF of N(m, s^2) at the box's faces; a uniform p between them, mapped back by the inverse CDF
    cdf_lo, cdf_hi = torch.special.ndtr((-1.0 - m) / s), torch.special.ndtr((1.0 - m) / s)
    p = cdf_lo + torch.rand((num_samples, *m.shape), dtype=torch.float64, device=m.device) * (cdf_hi - cdf_lo)
    x = m + s * torch.special.ndtri(p)
    # where the box's mass underflowed (mean far outside, tiny std), the draw is its limit: the face nearest the mean
    underflow = (cdf_hi <= cdf_lo) | (p <= 0)
    x = torch.where(underflow, m.clamp(max=1.0), x).clamp(-1.0, 1.0)
    return torch.where(flip, -x, x).to(mean.dtype)  # mirrored back


def normalise_q(q: torch.Tensor, mode: str, uniform_stats: Optional[tuple] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardise Q (K, B) by mean and std over each noised action's K proposals ("state"), over K x B ("batch"), by
    `uniform_stats` (each state's over uniform actions, (1, B) each: "uniform"), or not; returns (Qn, std (1, B, 1))."""
    if mode == "none":
        return q, torch.ones_like(q[:1]).unsqueeze(-1)
    if mode == "uniform":
        center, std = uniform_stats
    else:
        dims = (0,) if mode == "state" else (0, 1)
        center, std = q.mean(dim=dims, keepdim=True), q.std(dim=dims, keepdim=True).clamp_min(1e-6)
    return (q - center) / std, std.unsqueeze(-1)


def uniform_q_stats(q_fn: Callable, obs: torch.Tensor, num_samples: int, act_dim: int):
    """Q at K uniform actions per state, independent of any noised action: (actions, Q (K, B), (mean, std) (1, B))."""
    actions = 2.0 * torch.rand(num_samples, obs.shape[0], act_dim, device=obs.device) - 1.0
    q = q_fn(obs, actions)
    return actions, q, (q.mean(dim=0, keepdim=True), q.std(dim=0, keepdim=True).clamp_min(1e-6))


def boltzmann_draws(actions: torch.Tensor, q_normed: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per state one of the K uniform actions (K, B, A) drawn by softmax_k(Qn_k / alpha) (Gumbel-max): -> (B, A)."""
    gumbel = -torch.log(-torch.log(torch.rand_like(q_normed).clamp(1e-12, 1.0 - 1e-7)))
    pick = (q_normed / alpha + gumbel).argmax(dim=0)  # (B,)
    return actions[pick, torch.arange(actions.shape[1], device=actions.device)]


def score_estimate(q_fn: Callable, obs: torch.Tensor, noised_action: torch.Tensor, t: torch.Tensor, num_samples: int,
                   alpha: float, beta_min: float, beta_max: float, estimator: str = "tweedie", q_norm: str = "state",
                   uniform_stats: Optional[tuple] = None) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """Monte-Carlo estimate of grad_a log p_t(a_t | s), p_t the VP-noised Boltzmann policy exp(Qn / alpha).
    tweedie: a0_k ~ N(a_t / mu, sigma^2 / mu^2) truncated to the box, w = softmax_k(Qn(a0_k) / alpha),
             score = (mu sum_k w_k a0_k - a_t) / sigma^2             (Tweedie: E[a0 | a_t] from the posterior)
    idem:    a0_k = a_t / mu + (sigma / mu) eps_k,
             score = (1 / mu) sum_k w_k grad_a Qn(a0_k) / alpha = grad_{a_t} logsumexp_k Qn / alpha, Qn's mean/std fixed
    q_fn(obs (B, S), actions (K, B, A)) -> Q (K, B); a_t (B, A), t (B, 1); under no_grad (idem uses torch.func.grad).
    Returns the score (B, A) and, for the logs, its norm and the softmax's effective sample size 1 / sum_k w_k^2."""
    mu, sigma = vp_mu_sigma(t, beta_min, beta_max)
    if estimator == "tweedie":
        proposals = truncated_normal_in_box(noised_action / mu, sigma / mu, num_samples)  # (K, B, A)
        weights = torch.softmax(normalise_q(q_fn(obs, proposals), q_norm, uniform_stats)[0] / alpha, dim=0)  # (K, B)
        score = (mu * (weights.unsqueeze(-1) * proposals).sum(0) - noised_action) / sigma**2
    elif estimator == "idem":  # the gradient in the actions only (torch.func.grad), no parameter gradients
        eps = torch.randn(num_samples, *noised_action.shape, device=obs.device)
        proposals = noised_action / mu + (sigma / mu) * eps

        def summed_q(a):  # Q summed for the gradient, and Q itself for the weights
            q = q_fn(obs, a)
            return q.sum(), q

        grad_q, q = torch.func.grad(summed_q, has_aux=True)(proposals)
        q_normed, scale = normalise_q(q, q_norm, uniform_stats)
        weights = torch.softmax(q_normed / alpha, dim=0)
        score = (weights.unsqueeze(-1) * grad_q / scale).sum(0) / (alpha * mu)
    else:
        raise ValueError(f"unknown score estimator {estimator!r}")
    ess = (1.0 / weights.pow(2).sum(0)).mean()
    return score.detach(), {"score_length": score.norm(dim=-1).mean(), "softmax_ess": ess}


# ==== 2. Target velocity: the probability-flow ODE of the VP diffusion ================================================
def target_velocity(noised_action: torch.Tensor, score: torch.Tensor, t: torch.Tensor, w: float, beta_min: float,
                    beta_max: float, unit_normalise: bool = False) -> torch.Tensor:  # fmt: skip
    """v(a_t, t) = -0.5 beta(t) (a_t + w s), s = score or score / (||score|| + 1e-6): with w = 1 and the exact score
    the PF-ODE velocity da/dt (time runs from the action at t = 0 to noise at t = 1). (B, A), t (B, 1)."""
    if unit_normalise:
        score = score / (score.norm(dim=-1, keepdim=True) + 1e-6)
    return -0.5 * vp_beta(t, beta_min, beta_max) * (noised_action + w * score)


# ==== 3. MeanFlow: time pairs, the JVP target and the adaptive loss ===================================================
def sample_time_pair(batch_size: int, t_min: float, flow_matching_fraction: float, device):
    """(r, t), each (B, 1): t ~ U[t_min, 1 - t_min], r ~ U[0, t], and r = t on a `flow_matching_fraction` of rows."""
    t = t_min + (1.0 - 2.0 * t_min) * torch.rand(batch_size, 1, device=device)
    r = t * torch.rand(batch_size, 1, device=device)
    return torch.where(torch.rand(batch_size, 1, device=device) < flow_matching_fraction, t, r), t


def meanflow_target(actor, obs, noised_action, r, t, velocity) -> tuple[torch.Tensor, torch.Tensor]:
    """u_tgt = v - (t - r) du/dt, du/dt = d/dt u(s, a_t, r, t) along the flow: the JVP of u at (a_t, r, t) with
    tangent (v, 0, 1) [torch.func.jvp], without gradient. Returns (u_tgt, du/dt)."""
    with torch.no_grad():
        _, du_dt = torch.func.jvp(lambda a_, r_, t_: actor(obs, a_, r_, t_), (noised_action, r, t),
                                  (velocity, torch.zeros_like(r), torch.ones_like(t)))  # fmt: skip
    return velocity - (t - r) * du_dt, du_dt


def adaptive_weighted(sq_err: torch.Tensor, power: float, eps: float = 1e-3) -> torch.Tensor:
    """MeanFlow's adaptive loss mean_b d_b / stopgrad(d_b + eps)^p: p = 1 is log-like, p = 0 the squared error."""
    return (sq_err / (sq_err.detach() + eps).pow(power)).mean()


def meanflow_loss(actor, obs, noised_action, r, t, velocity, adaptive_power: float = 0.5, diagnostics: bool = False):
    """adaptive_weighted(d), d_b = mean_dims (u - u_tgt)^2: u with gradient, the target (and its JVP) without, the
    same gradient as MeanFlow's stop-gradient. `diagnostics`: also the target's norms and the error by range of t."""
    u = actor(obs, noised_action, r, t)
    u_target, du_dt = meanflow_target(actor, obs, noised_action, r, t, velocity)
    sq_err = (u - u_target).pow(2).mean(-1)
    info = {}
    if diagnostics:
        info = {"du_dt_norm": du_dt.norm(dim=-1).mean(), "target_norm": u_target.norm(dim=-1).mean(),
                "meanflow_mse": sq_err.mean()}  # fmt: skip
        for low, high in ((0.0, 0.33), (0.33, 0.67), (0.67, 1.0)):  # where along the flow the fit is off
            in_range = ((t >= low) & (t < high)).squeeze(-1).float()
            info[f"meanflow_mse_t{low:.2f}-{high:.2f}"] = (sq_err * in_range).sum() / in_range.sum().clamp_min(1)
    return adaptive_weighted(sq_err, adaptive_power), info


# ==== 4. Acting: one network evaluation per candidate, best of N by the critics =======================================
def flow_sample(actor: MeanFlowActor, obs: torch.Tensor, num_candidates: int, num_steps: int = 1,
                noise: Optional[torch.Tensor] = None) -> torch.Tensor:  # fmt: skip
    """N samples per state of the actor's flow from noise eps (t = 1) to an action (t = 0) in `num_steps` MeanFlow steps
    z_r = z_t - (t - r) u(s, z_t, r, t), clipped to the box (1 step: the one-step policy); noise, result (N, B, A)."""
    z = torch.randn(num_candidates, obs.shape[0], actor.act_dim, device=obs.device) if noise is None else noise
    times = torch.linspace(1.0, 0.0, num_steps + 1, device=obs.device).view(-1, 1, 1)
    for t, r in zip(times[:-1], times[1:]):
        z = z - (t - r) * actor(obs, z, r, t)
    return z.clamp(-1.0, 1.0)


def zero_noise_action(actor: MeanFlowActor, obs: torch.Tensor) -> torch.Tensor:
    """The one-step map of eps = 0, one deterministic evaluation, as SAC evaluates its mean action: (B, S) -> (B, A)."""
    return flow_sample(actor, obs, 1, noise=torch.zeros(1, obs.shape[0], actor.act_dim, device=obs.device))[0]


def sample_actions(actor, critic, obs: torch.Tensor, num_candidates: int, flow_steps: int = 1) -> torch.Tensor:
    """The candidate with the highest min(Q1, Q2): obs (B, S) -> (B, A); N = 1 skips the critic. flow_steps > 1
    (scripts/evaluate.py): the candidates come from that many MeanFlow steps instead of one."""
    candidates = flow_sample(actor, obs, num_candidates, flow_steps)
    if num_candidates == 1:
        return candidates[0]
    best = critic(obs, candidates).min(dim=0).values.argmax(dim=0)  # (B,)
    return candidates[best, torch.arange(obs.shape[0], device=obs.device)]


# ==== 5. Critic: TD target without an entropy term; the two updates ===================================================
def td_target(critic_target, next_obs, next_action, reward, terminated, gamma: float, reward_scale: float):
    """y = reward_scale r + gamma (1 - terminated) min_j Qtarget_j(s', a'). Truncation is not termination."""
    next_q = critic_target(next_obs, next_action).min(dim=0).values
    return reward_scale * reward + gamma * (1.0 - terminated) * next_q


def bootstrap_target(args: Args, batch, actor, critic, critic_target) -> torch.Tensor:
    """The TD target y (B,), the next action a' from the acting sampler (best of --num-target-candidates)."""
    _, _, rewards, next_obs, terminated = batch
    with torch.no_grad():
        next_actions = sample_actions(actor, critic, next_obs, args.num_target_candidates)
        return td_target(critic_target, next_obs, next_actions, rewards, terminated, args.gamma, args.reward_scale)


def critic_loss(critic: TwinCritic, obs, actions, y) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_j mean_b (Q_j(s, a) - y)^2 over both critics, and the batch's mean Q (for the logs)."""
    q = critic(obs, actions)  # (2, B)
    return (q - y).pow(2).mean(dim=1).sum(), q.detach().mean()


def actor_loss(args: Args, batch, actor, critic, diagnostics: bool = False) -> tuple[torch.Tensor, dict]:
    """The MeanFlow loss at replay states, their replay actions a (or draws of the target) noised to t: a_t = mu(t) a +
    sigma(t) eps, v = the PF-ODE velocity at (a_t, t) from the score estimate, loss = adaptive-weighted
    || u(s, a_t, r, t) - stopgrad(v - (t - r) du/dt) ||^2. The info is empty unless `diagnostics` (at log time)."""
    obs, actions, act_dim = batch[0], batch[1], batch[1].shape[-1]

    # SOM's three Q's: the score weighs proposals by the MEAN of the two online critics (here), candidates are ranked
    # by the online critics' MIN (sample_actions), and the TD target bootstraps on the target critics' MIN (td_target)
    def mean_q(o, a):
        return critic(o, a).mean(dim=0)

    with torch.no_grad():
        uniform_stats, num_drawn = None, round(args.target_point_fraction * len(obs))
        if args.q_norm == "uniform" or num_drawn:  # Q at K uniform actions: the uniform scale, the target's draws
            rows = len(obs) if args.q_norm == "uniform" else num_drawn
            uniform, q_uniform, uniform_stats = uniform_q_stats(mean_q, obs[:rows], args.num_mc_samples, act_dim)
        if num_drawn:  # the first rows' clean actions: draws of exp(Q / (alpha std_U(Q)))
            q_normed = normalise_q(q_uniform[:, :num_drawn], "uniform", [x[:, :num_drawn] for x in uniform_stats])[0]
            actions = torch.cat([boltzmann_draws(uniform[:, :num_drawn], q_normed, args.alpha), actions[num_drawn:]])
        r, t = sample_time_pair(len(obs), args.t_min, args.flow_matching_fraction, obs.device)
        mu, sigma = vp_mu_sigma(t, args.beta_min, args.beta_max)
        noised = mu * actions + sigma * torch.randn_like(actions)  # the training point: an action noised to time t
        score, score_info = score_estimate(mean_q, obs, noised, t, args.num_mc_samples, args.alpha, args.beta_min,
                                           args.beta_max, args.score_estimator, args.q_norm, uniform_stats)  # fmt: skip
        velocity = target_velocity(noised, score, t, args.w, args.beta_min, args.beta_max, args.score_norm)
    loss, info = meanflow_loss(actor, obs, noised, r, t, velocity, args.adaptive_power, diagnostics)
    return loss, {f"losses/{k}": v for k, v in {**score_info, **info}.items()} if diagnostics else {}


def actor_diagnostics(args: Args, batch, actor, critic) -> dict:
    """For the logs, eager on a small batch: the actor loss's diagnostics, and one_step_q_gap, the mean Q of the
    actor's own 20-step flow minus that of its one-step map from the same noise (> 0: one step lands lower)."""
    with torch.no_grad():
        _, info = actor_loss(args, batch, actor, critic, diagnostics=True)
        obs, noise = batch[0], torch.randn(1, *batch[1].shape, device=batch[1].device)  # one eps for both, paired
        q_flow, q_one_step = (critic(obs, flow_sample(actor, obs, 1, steps, noise)).mean() for steps in (20, 1))
        return {**info, "losses/one_step_q_gap": q_flow - q_one_step}


def hot_paths(compile: bool = False, device: Optional[torch.device] = None, cudagraphs: bool = False):
    """The per-step functions by name, eager or (--compile) compiled copies of the same math; the updates take `hot`."""
    return common.hot_functions(
        [sample_actions, bootstrap_target, critic_loss, actor_loss], compile, device, cudagraphs
    )


def critic_update(args: Args, batch, actor, critic, critic_target, critic_optimizer, hot=None) -> dict:
    """One Adam step of both critics toward the TD target (`hot`: the functions to run; default eager)."""
    hot = hot or hot_paths()
    y = hot.bootstrap_target(args, batch, actor, critic, critic_target)  # consumed before the next call: no copy
    loss, q_mean = hot.critic_loss(critic, batch[0], batch[1], y)
    loss = common.optimizer_step(critic_optimizer, loss, "losses/critic_loss")
    return {"losses/critic_loss": loss, "losses/q_values": q_mean.clone()}  # copies: read at log time (CUDA graphs)


def actor_update(args: Args, batch, actor, critic, actor_optimizer, hot: Optional[SimpleNamespace] = None) -> dict:
    """One Adam step of the actor on the MeanFlow loss (`hot`: the functions to run; default eager)."""
    loss, info = (hot or hot_paths()).actor_loss(args, batch, actor, critic)
    return {"losses/actor_loss": common.optimizer_step(actor_optimizer, loss, "losses/actor_loss"), **info}


# ==== Saved models and input checks ===================================================================================
def build_networks(args: Args, obs_dim: int, act_dim: int, device):
    actor = MeanFlowActor(obs_dim, act_dim, args.hidden_dim, args.num_hidden).to(device)
    return actor, TwinCritic(obs_dim, act_dim, args.hidden_dim, args.num_hidden).to(device)


def load_policy(path: str, num_candidates: Optional[int] = None, device: str = "cpu", flow_steps: int = 1):
    """(policy, args) from a saved file: obs (B, S) -> best of `num_candidates` (default N), `flow_steps` each."""
    payload = common.load_model(path, ALGORITHM)
    args = common.known_args(Args, payload["args"])
    actor, critic = build_networks(args, payload["obs_dim"], payload["act_dim"], device)
    actor.load_state_dict(payload["actor"])
    critic.load_state_dict(payload["critic"])
    n = num_candidates or args.num_candidates
    return torch.no_grad()(lambda obs: sample_actions(actor, critic, obs.to(device), n, flow_steps)), args


def validate(args: Args) -> None:
    """Every flag in its valid range, then the env id; anything else stops with one sentence (exit status 2)."""
    optional = [name for name in ("num_target_candidates", "num_collect_candidates") if getattr(args, name) is not None]
    common.check_positive(args, ["actor_lr", "num_mc_samples", "beta_max", "alpha", "w", "num_candidates", *optional])
    common.require_flag(args, "num_mc_samples", args.num_mc_samples >= 2, "at least 2")
    common.require_flag(args, "beta_min", args.beta_min >= 0, "at least 0")
    common.require_flag(args, "t_min", 0 < args.t_min < 0.5, "in (0, 0.5)")
    common.require_flag(args, "flow_matching_fraction", 0 <= args.flow_matching_fraction <= 1, "in [0, 1]")
    common.require_flag(args, "target_point_fraction", 0 <= args.target_point_fraction <= 1, "in [0, 1]")
    common.require_flag(args, "adaptive_power", args.adaptive_power >= 0, "at least 0")
    common.require(args.beta_min < args.beta_max,
                   f"--beta-min ({args.beta_min}) must be below --beta-max ({args.beta_max}).")  # fmt: skip
    common.validate_run(args)


# ==== Training ========================================================================================================
def main(argv: Optional[list[str]] = None) -> None:
    """Train from the command line `argv` (default: sys.argv[1:])."""
    args = tyro.cli(Args, args=argv)
    if args.resume:  # the checkpoint's arguments, with the flags that may change taken from the command line
        args = common.resume_args(args, args.resume, ALGORITHM, argv)
    validate(args)
    args.num_target_candidates = args.num_target_candidates or args.num_candidates
    args.num_collect_candidates = args.num_collect_candidates or args.num_candidates
    run_dir = common.run_dir_for(args)
    common.seed_everything(args.seed, args.torch_deterministic)
    device = common.pick_device(args.cuda)
    hot = hot_paths(args.compile, device, args.cudagraphs)  # the eager functions, or compiled copies of them
    envs = common.make_vector_env(args.env_id, args.num_envs, args.seed,
                                  os.path.join(run_dir, "videos") if args.capture_video else None)  # fmt: skip
    obs_dim, act_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]

    actor, critic = build_networks(args, obs_dim, act_dim, device)
    critic_target = build_networks(args, obs_dim, act_dim, device)[1]
    critic_target.load_state_dict(critic.state_dict())
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.actor_lr)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.critic_lr)
    rb = ReplayBuffer(min(args.buffer_size, args.total_timesteps), obs_dim, act_dim, device)
    # the loop's counters (env transitions, updates, action-bound share since the last log): in every checkpoint
    step = {"global_step": 0, "updates": 0, "bound_hits": 0.0, "acting_steps": 0}
    run = common.Run(ALGORITHM, args, run_dir, envs, {"actor": actor, "critic": critic, "critic_target": critic_target},
                     {"actor": actor_optimizer, "critic": critic_optimizer}, rb, step)  # fmt: skip
    collect = torch.no_grad()(lambda o: hot.sample_actions(actor, critic, o, args.num_collect_candidates))
    policies = {  # evaluated: best-of-N (the protocol), N = 1 (the one-step actor alone) and its zero-noise action
        f"best-of-{args.num_candidates}": lambda o: hot.sample_actions(actor, critic, o, args.num_candidates),
        "n1": lambda o: hot.sample_actions(actor, critic, o, 1),
        "zero_noise": lambda o: zero_noise_action(actor, o),
    }

    obs, _ = envs.reset(seed=args.seed + step["global_step"])  # in-flight episodes restart after a resume
    last_return, update_info = None, {}
    with run.stop_on_non_finite():
        while step["global_step"] < args.total_timesteps:
            # ---- act: uniform warm-up, then one one-step sample (best of --num-collect-candidates if > 1) ----
            if step["global_step"] < args.learning_starts:
                actions = envs.action_space.sample()
            else:
                actions = collect(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
                common.check_finite("actions", actions)
                step["bound_hits"] += float((np.abs(actions) > 0.999).mean())
                step["acting_steps"] += 1
            next_obs, rewards, terminated, truncated, infos = envs.step(actions)
            global_step = step["global_step"] = step["global_step"] + args.num_envs
            last_return = run.log_episodes(infos, last_return)

            # ---- store: the real next observation (the final one where an episode ended) ----
            real_next_obs = common.real_next_obs(next_obs, infos)
            common.check_finite("rewards", rewards)  # a NaN from the env never enters the buffer
            common.check_finite("observations", real_next_obs)
            rb.add(obs, real_next_obs, actions, rewards, terminated)
            obs = next_obs

            # ---- learn: one critic and one actor update per vector step, once the buffer holds --learning-starts rows
            if global_step >= args.learning_starts and rb.size >= min(args.learning_starts, rb.capacity):
                common.cuda_graph_step(args)
                batch = rb.sample(args.batch_size)
                update_info = critic_update(args, batch, actor, critic, critic_target, critic_optimizer, hot)
                update_info.update(actor_update(args, batch, actor, critic, actor_optimizer, hot))
                common.polyak_update(critic_target, critic, args.tau)
                step["updates"] += 1

            # ---- log: the update's losses, and the actor's fit on 64 replay rows (eager, outside the hot path) ----
            if run.log_due():
                diagnostics = actor_diagnostics(args, rb.sample(64), actor, critic) if update_info else {}
                bounds = step["bound_hits"] / max(step["acting_steps"], 1)  # since the last log
                step.update(bound_hits=0.0, acting_steps=0)
                charts = {"charts/SPS": run.progress.rate(), "charts/updates": step["updates"]}
                run.logger.scalars({**update_info, **diagnostics, **charts, "charts/action_bound_fraction": bounds},
                                   global_step)  # fmt: skip
            run.progress.update(global_step, step["updates"], last_return)

            # ---- evaluate: eval/episodic_return (best-of-N), eval/episodic_return_n1, ..._zero_noise ----
            if run.eval_due():
                run.evaluate(policies, device)

            # ---- checkpoint: periodically, and on SIGINT / SIGTERM (then stop) ----
            if run.checkpoint_and_stop():
                break
    run.finish({"obs_dim": obs_dim, "act_dim": act_dim, "actor": actor.state_dict(), "critic": critic.state_dict()})


if __name__ == "__main__":
    main()
