"""SOM: Score-Based One-step MeanFlow Policy Optimization, in one file.

Paper: Kim, Ki, Ahn, Lee, "Score-Based One-step MeanFlow Policy Optimization", arXiv 2605.23365 (2026).

The idea. The target policy is the Boltzmann policy pi*(a|s) ~ exp(Q(s, a) / alpha). Noise it with a VP diffusion,
    a_t = mu(t) a_0 + sigma(t) eps,   beta(t) = beta_min + t (beta_max - beta_min),
and the probability-flow ODE
    da/dt = v(a_t, t) = -0.5 beta(t) (a_t + w score_t(a_t))            (w = 1: the exact PF-ODE)
carries Gaussian noise at t = 1 to pi* at t = 0. SOM never samples pi* exactly: it estimates score_t from the critic
with K Monte-Carlo proposals of the clean action (section 1), turns it into v (section 2) and trains a MeanFlow
network u(s, a, r, t), the AVERAGE velocity over [r, t], with the MeanFlow identity (section 3)
    u(s, a_t, r, t) = v(a_t, t) - (t - r) d/dt u(s, a_t, r, t).
One network evaluation then maps noise to an action, a = eps - u(s, eps, 0, 1) (section 4). Acting draws N such
candidates and keeps the one the twin critics rate highest; N = 1 is the pure one-step policy. The critics learn a
TD target without an entropy term (section 5).

What is reconstructed. Only the abstract is public and there is no released code. From the paper: the MeanFlow
actor, the Boltzmann target, a score estimated from Q by an iDEM-style Monte-Carlo estimator, the PF-ODE target
velocity and best-of-N selection; from a third party's report of its tables, K = 100 and beta in [0.1, 20].
Everything else is our choice and a flag; each reconstructed Args field is tagged [paper], [third-party] or [ours],
and README "What is reconstructed" gives the evidence for each.

Our default score is the posterior-mean (Tweedie) form of the Monte-Carlo estimate,
    a0_k ~ N(a_t / mu, sigma^2 / mu^2) truncated to the box,   w_k = softmax_k(Qn(s, a0_k) / alpha),
    score = (mu sum_k w_k a0_k - a_t) / sigma^2,
which needs critic forward passes only and tends to -a_t at t = 1, where the velocity then vanishes as the exact
PF-ODE's does. The form a third party reports (the iDEM gradient, unit-normalised and scaled by w) is
`--score-estimator idem --score-norm --q-norm batch`. The actor is fitted at approximate draws of exp(Q / alpha)
noised to t (`--actor-points boltzmann`), and on a few rows per update its one-step map is also regressed onto its
own multi-step flow (`--distill-rows`). README "What is reconstructed" measures each against its alternative.

Run:   python som.py --env-id Hopper-v4
       python som.py --env-id Hopper-v4 --compile      # the same math, compiled (README, Speed)
Help:  python som.py --help
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import numpy as np
import torch
import torch.nn as nn

import common

ALGORITHM = "som"


@dataclass
class Args:
    exp_name: str = "som"
    """the name of this experiment (part of the run directory's name)"""
    seed: int = 1
    """seed of the experiment (python, numpy, torch, envs)"""
    torch_deterministic: bool = True
    """set `torch.backends.cudnn.deterministic`"""
    cuda: bool = True
    """train on the GPU when there is one, else on the CPU (the first lines of a run say which); --no-cuda: the CPU"""
    compile: bool = False
    """torch.compile the hot paths: the same math, several times faster after tens of seconds of compiling per graph"""
    track: bool = False
    """mirror the TensorBoard logs to Weights and Biases"""
    wandb_project_name: str = "som"
    """the wandb project name"""
    wandb_entity: Optional[str] = None
    """the wandb entity (team)"""
    capture_video: bool = False
    """record videos of the first training env to runs/{run_name}/videos"""
    save_model: bool = False
    """save the networks to runs/{run_name}/{exp_name}.pt at the end"""
    run_dir: str = "runs"
    """parent folder of the run directories"""
    checkpoint_frequency: int = 250_000
    """write runs/{run_name}/checkpoint.pt every this many environment transitions (and on SIGINT/SIGTERM)"""
    checkpoint_buffer: bool = False
    """include the replay buffer in checkpoints (up to GBs); without it a resumed run refills it from scratch"""
    resume: Optional[str] = None
    """continue the run saved in this checkpoint, with its arguments (README "Long runs": what may change)"""

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
    """[third-party] K: Monte-Carlo proposals per noised action in the score estimate (the paper's value as a third
    party reports it)"""
    beta_min: float = 0.1
    """[third-party] VP schedule: beta(0), the paper's value as a third party reports it"""
    beta_max: float = 20.0
    """[third-party] VP schedule: beta(1), the paper's value as a third party reports it"""
    alpha: float = 0.1
    """[ours] Boltzmann temperature on the normalised Q values (see --q-norm), chosen by a sweep (README)"""
    score_estimator: Literal["tweedie", "idem"] = "tweedie"
    """[ours] tweedie: posterior-mean score (mu E_w[a0] - a_t) / sigma^2 with box-truncated proposals; idem:
    gradient of logsumexp_k Q(a0_k) / alpha through untruncated proposals (the form reported by a third party)"""
    q_norm: Literal["state", "batch", "none"] = "state"
    """[ours] standardise Q before the softmax over the K proposals of each noised action (state), over the
    whole K x B matrix (batch, the third-party form) or not at all (none: raw Q / alpha)"""
    score_norm: bool = False
    """[ours] off; on: unit-normalise the score and multiply by w in the target velocity (the third-party form)"""
    w: float = 1.0
    """[paper] greediness: the target velocity is -0.5 beta(t) (a_t + w * score); [ours] 1, the exact PF-ODE"""
    num_candidates: int = 32
    """[paper] N: one-step candidates per decision, the best by min(Q1, Q2) is taken; 1 = the pure one-step policy;
    [ours] 32"""
    num_target_candidates: Optional[int] = None
    """N for the next action a' of the TD target (default: --num-candidates)"""
    flow_matching_fraction: float = 0.25
    """[ours] fraction of the actor batch with r = t (plain flow matching, as MeanFlow does); otherwise
    t ~ U[t_min, 1 - t_min], r ~ U[0, t]"""
    distill_rows: int = 64
    """[ours] rows per actor update on which the one-step map u(s, eps, 0, 1) is also regressed onto the actor's
    own multi-step flow from the same noise (0: off, the MeanFlow identity alone)"""
    distill_steps: int = 8
    """[ours] MeanFlow steps of that multi-step flow"""
    actor_points: Literal["boltzmann", "replay"] = "boltzmann"
    """[ours] actions noised to t for the actor's fit: approximate draws of exp(Q / alpha) (K uniform proposals
    resampled by the softmax), or the batch's replay actions"""
    adaptive_power: float = 0.5
    """[ours] p of MeanFlow's adaptive loss weight 1 / (err + 1e-3)^p; 0 = plain squared error"""
    t_min: float = 1e-3
    """[ours] smallest flow time used in training (the VP score is singular at t = 0)"""
    exploration_noise: float = 0.0
    """[ours] std of Gaussian noise added to the chosen action while collecting data (evaluation never adds it)"""


# ====================================================================================================================
# VP schedule:  beta(t) = beta_min + t (beta_max - beta_min),  a_t = mu(t) a_0 + sigma(t) eps
# ====================================================================================================================


def vp_beta(t: torch.Tensor, beta_min: float, beta_max: float) -> torch.Tensor:
    return beta_min + t * (beta_max - beta_min)


def vp_mu_sigma(t: torch.Tensor, beta_min: float, beta_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Signal and noise scales: mu = exp(-0.5 int_0^t beta), sigma = sqrt(1 - mu^2). Same shape as t."""
    log_mu = -0.5 * (beta_min * t + 0.5 * (beta_max - beta_min) * t**2)
    mu = torch.exp(log_mu)
    sigma = torch.sqrt(-torch.expm1(2.0 * log_mu))  # 1 - mu^2 without cancellation at small t
    return mu, sigma


# ====================================================================================================================
# Networks
# ====================================================================================================================


def time_embedding(t: torch.Tensor, dim: int = 16, max_freq: float = 20.0) -> torch.Tensor:
    """Low-frequency sinusoidal features of t in [0, 1]: (..., 1) -> (..., dim), frequencies 1 .. max_freq rad.

    Low frequencies keep du/dt (the JVP in the MeanFlow target) small; t * 1000 would make it explode.
    """
    freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), dim // 2, device=t.device, dtype=t.dtype))
    angles = t * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def linear(in_dim: int, out_dim: int, fan_in: int, bias: bool = True) -> nn.Linear:
    """nn.Linear initialised as one layer with `fan_in` inputs would be (uniform in +-1/sqrt(fan_in)): a first layer
    split by input (state, action, time) starts exactly like the single layer on their concatenation."""
    layer = nn.Linear(in_dim, out_dim, bias=bias)
    bound = 1.0 / math.sqrt(fan_in)
    for p in layer.parameters():
        nn.init.uniform_(p, -bound, bound)
    return layer


class MeanFlowActor(nn.Module):
    """u(s, a, r, t): the average velocity of the flow over [r, t], an MLP with Mish on [s, a, emb(t), emb(t - r)].

    Inputs broadcast: s (B, S), a (N, B, A), r and t (..., 1); the output has a's shape. The first layer is applied
    input by input, W [s, a, e] + b = (W_s s + b) + W_a a + W_e e, so a state shared by N candidates is multiplied
    once, not N times."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int, num_hidden: int):
        super().__init__()
        self.act_dim = act_dim
        fan_in = obs_dim + act_dim + 32
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
    """The same linear layer of both critics, stored as one (2, in, out) weight so that both run as one batched
    matmul: x (2, ..., in), or (1, ..., in) for an input both share, -> (2, ..., out). Initialised as nn.Linear with
    `fan_in` inputs."""

    def __init__(self, in_dim: int, out_dim: int, fan_in: int, bias: bool = True):
        super().__init__()
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = nn.Parameter(torch.empty(2, in_dim, out_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(2, 1, out_dim).uniform_(-bound, bound)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(x.shape[0], -1, x.shape[-1])
        if self.bias is None:
            out = torch.matmul(rows, self.weight)
        else:
            out = torch.baddbmm(self.bias, rows.expand(2, -1, -1), self.weight)
        return out.view(2, *x.shape[1:-1], out.shape[-1])


class TwinCritic(nn.Module):
    """Q1 and Q2, each an MLP with Mish on [s, a], in one batched call: (s (..., S), a (..., A)) -> (2, ...).

    As in the actor, the first layer is applied input by input, so the K proposals or N candidates of a state share
    one projection of it: s (B, S) with a (K, B, A) costs one (B, S) product, not K."""

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


# ====================================================================================================================
# Replay buffer (tensors on the training device; sampling is one gather)
# ====================================================================================================================


class ReplayBuffer:
    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device):
        self.capacity, self.device, self.size, self.pos = capacity, device, 0, 0
        self.obs = torch.zeros(capacity, obs_dim, device=device)
        self.next_obs = torch.zeros(capacity, obs_dim, device=device)
        self.actions = torch.zeros(capacity, act_dim, device=device)
        self.rewards = torch.zeros(capacity, device=device)
        self.terminated = torch.zeros(capacity, device=device)

    def add(self, obs, next_obs, actions, rewards, terminated) -> None:
        """Add one vector step (arrays with a leading num_envs dim)."""
        n = len(obs)
        idx = (self.pos + torch.arange(n)) % self.capacity
        for buf, x in ((self.obs, obs), (self.next_obs, next_obs), (self.actions, actions),
                       (self.rewards, rewards), (self.terminated, terminated)):  # fmt: skip
            buf[idx] = torch.as_tensor(np.asarray(x), dtype=torch.float32).to(self.device)
        self.pos = (self.pos + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int):
        idx = torch.randint(0, self.size, (batch_size,), device=self.device)
        return self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.terminated[idx]


# ====================================================================================================================
# 1. Score of the noised Boltzmann policy, estimated from the critic with K Monte-Carlo proposals
# ====================================================================================================================


def truncated_normal_in_box(mean: torch.Tensor, std: torch.Tensor, num_samples: int) -> torch.Tensor:
    """K draws of N(mean, std^2) truncated to [-1, 1] per dimension, by inverse-CDF sampling.

    mean, std: (B, A) (std may broadcast). Returns (K, B, A) in mean's dtype. Computed in float64 and mirrored so
    the box always lies at or below the mean (the lower tail, where the normal CDF keeps its relative precision).
    Near t = 1 the proposal std reaches ~150 (almost uniform on the box); near t = 0 it is tiny. Where the box is
    so far in the tail that the CDF underflows, the draw is the box face nearest the mean (its limit).
    """
    flip = mean < 0
    m = mean.double().abs()
    s = std.double().expand_as(m)
    cdf_lo = torch.special.ndtr((-1.0 - m) / s)
    cdf_hi = torch.special.ndtr((1.0 - m) / s)
    u = torch.rand((num_samples, *m.shape), dtype=torch.float64, device=m.device)
    p = cdf_lo + u * (cdf_hi - cdf_lo)
    x = m + s * torch.special.ndtri(p)
    x = torch.where((cdf_hi > cdf_lo) & (p > 0), x, m.clamp(max=1.0)).clamp(-1.0, 1.0)
    return torch.where(flip, -x, x).to(mean.dtype)


def normalise_q(q: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardise Q values of shape (K, B) for the softmax over K. Returns (normalised Q, scale) with the scale
    (std, treated as a constant) broadcastable to (K, B, 1) so that gradients can be divided by it too."""
    if mode == "none":
        return q, torch.ones_like(q[:1]).unsqueeze(-1)
    dims = (0,) if mode == "state" else (0, 1)
    mean = q.mean(dim=dims, keepdim=True)
    std = q.std(dim=dims, keepdim=True).clamp_min(1e-6)
    return (q - mean) / std, std.unsqueeze(-1)


def score_estimate(
    q_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    obs: torch.Tensor,
    noised_action: torch.Tensor,
    t: torch.Tensor,
    num_samples: int,
    alpha: float,
    beta_min: float,
    beta_max: float,
    estimator: str = "tweedie",
    q_norm: str = "state",
) -> tuple[torch.Tensor, dict]:
    """Monte-Carlo estimate of grad_a log p_t(a_t | s), p_t the VP-noised Boltzmann policy exp(Q / alpha).

    q_fn(obs (B, S), actions (K, B, A)) -> Q (K, B), differentiable in the actions for 'idem'. Call it under
    torch.no_grad(): nothing here needs a graph (idem's input gradient is taken with torch.func.grad).
    obs (B, S), noised_action a_t (B, A), t (B, 1). Returns the score (B, A) (no gradient) and diagnostics,
    among them the softmax's effective sample size 1 / sum_k w_k^2 averaged over the batch (K = uniform weights).

    tweedie: a0_k ~ N(a_t / mu, sigma^2 / mu^2) truncated to the box, w = softmax_k(Qn(a0_k) / alpha),
             score = (mu sum_k w_k a0_k - a_t) / sigma^2             (Tweedie: E[a0 | a_t] from the posterior)
    idem:    a0_k = a_t / mu + (sigma / mu) eps_k,
             score = grad_{a_t} logsumexp_k Qn(a0_k) / alpha = (1 / mu) sum_k w_k grad_a Qn(a0_k) / alpha
    """
    mu, sigma = vp_mu_sigma(t, beta_min, beta_max)
    if estimator == "tweedie":
        proposals = truncated_normal_in_box(noised_action / mu, sigma / mu, num_samples)  # (K, B, A)
        q_normed, _ = normalise_q(q_fn(obs, proposals), q_norm)
        weights = torch.softmax(q_normed / alpha, dim=0)  # (K, B)
        posterior_mean = (weights.unsqueeze(-1) * proposals).sum(0)
        score = (mu * posterior_mean - noised_action) / sigma**2
    elif estimator == "idem":
        eps = torch.randn((num_samples, *noised_action.shape), device=obs.device)
        proposals = noised_action / mu + (sigma / mu) * eps

        def summed_q(a):  # torch.func.grad differentiates in the actions only (no parameter gradients)
            q = q_fn(obs, a)
            return q.sum(), q

        grad_q, q = torch.func.grad(summed_q, has_aux=True)(proposals)
        q_normed, scale = normalise_q(q, q_norm)
        weights = torch.softmax(q_normed / alpha, dim=0)
        score = (weights.unsqueeze(-1) * grad_q / scale).sum(0) / (alpha * mu)
    else:
        raise ValueError(f"unknown score estimator {estimator!r}")
    ess = (1.0 / weights.pow(2).sum(0)).mean()
    return score.detach(), {"score_norm": score.norm(dim=-1).mean(), "softmax_ess": ess}


def boltzmann_resample(q_fn, obs: torch.Tensor, act_dim: int, num_samples: int, alpha: float, q_norm: str):
    """One approximate draw of pi*(a|s) ~ exp(Q(s, a) / alpha) per state: K uniform proposals in the box, one kept
    with probability softmax_k(Qn_k / alpha) (sampling-importance-resampling; the Gumbel-max trick, no host sync).
    obs (B, S) -> (B, A)."""
    proposals = torch.rand(num_samples, obs.shape[0], act_dim, device=obs.device) * 2.0 - 1.0
    q_normed, _ = normalise_q(q_fn(obs, proposals), q_norm)
    gumbel = -torch.log(-torch.log(torch.rand_like(q_normed).clamp_min(1e-20)))
    chosen = (q_normed / alpha + gumbel).argmax(dim=0)  # (B,)
    return proposals[chosen, torch.arange(obs.shape[0], device=obs.device)]


# ====================================================================================================================
# 2. Target velocity: the probability-flow ODE of the VP diffusion
# ====================================================================================================================


def target_velocity(
    noised_action: torch.Tensor,
    score: torch.Tensor,
    t: torch.Tensor,
    w: float,
    beta_min: float,
    beta_max: float,
    unit_normalise: bool = False,
) -> torch.Tensor:
    """v(a_t, t) = -0.5 beta(t) (a_t + w * s), s = score or score / (||score|| + 1e-6). Shapes (B, A), t (B, 1).

    With w = 1 and the exact score this is the PF-ODE velocity da/dt (time running from action t=0 to noise t=1).
    """
    if unit_normalise:
        score = score / (score.norm(dim=-1, keepdim=True) + 1e-6)
    return -0.5 * vp_beta(t, beta_min, beta_max) * (noised_action + w * score)


# ====================================================================================================================
# 3. MeanFlow: time pairs, the JVP target and the adaptive loss
# ====================================================================================================================


def sample_time_pair(batch_size: int, t_min: float, flow_matching_fraction: float, device):
    """(r, t), each (B, 1): t ~ U[t_min, 1 - t_min], r ~ U[0, t], and r = t on a `flow_matching_fraction` of rows."""
    t = t_min + (1.0 - 2.0 * t_min) * torch.rand(batch_size, 1, device=device)
    r = t * torch.rand(batch_size, 1, device=device)
    same = torch.rand(batch_size, 1, device=device) < flow_matching_fraction
    return torch.where(same, t, r), t


def meanflow_target(actor, obs, noised_action, r, t, velocity) -> tuple[torch.Tensor, torch.Tensor]:
    """u_tgt = v - (t - r) du/dt, with du/dt = d/dt u(s, a_t, r, t) along the flow: the JVP of u at (a_t, r, t)
    with tangent (v, 0, 1) [torch.func.jvp]. No gradient. Returns (u_tgt, du/dt), each shaped like the action."""
    with torch.no_grad():
        _, du_dt = torch.func.jvp(
            lambda a_, r_, t_: actor(obs, a_, r_, t_),
            (noised_action, r, t),
            (velocity, torch.zeros_like(r), torch.ones_like(t)),
        )
    return velocity - (t - r) * du_dt, du_dt


def adaptive_weighted(sq_err: torch.Tensor, power: float, eps: float = 1e-3) -> torch.Tensor:
    """MeanFlow's adaptive loss: mean_b d_b / stopgrad(d_b + eps)^p for per-sample squared errors d_b."""
    return (sq_err / (sq_err.detach() + eps).pow(power)).mean()


def meanflow_loss(actor, obs, noised_action, r, t, velocity, adaptive_power: float = 1.0, adaptive_eps: float = 1e-3,
                  diagnostics: bool = False) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """MeanFlow loss with the adaptive weight: mean_b d_b / stopgrad(d_b + eps)^p, d_b = mean_dims (u - u_tgt)^2.
    p = 1 is MeanFlow's choice (a robust, log-like loss); p = 0 is the plain squared error.

    u is computed with gradient; the target (and its JVP) without, which gives the same gradient as MeanFlow's
    stop-gradient on the target. obs (B, S), noised_action / velocity (B, A), r / t (B, 1). With `diagnostics`
    the info also holds the norms of u_tgt and du/dt and the squared error by range of t (else it is empty).
    """
    u = actor(obs, noised_action, r, t)
    u_target, du_dt = meanflow_target(actor, obs, noised_action, r, t, velocity)
    sq_err = (u - u_target).pow(2).mean(-1)
    loss = adaptive_weighted(sq_err, adaptive_power, adaptive_eps)
    if not diagnostics:
        return loss, {}
    info = {"du_dt_norm": du_dt.norm(dim=-1).mean(), "target_norm": u_target.norm(dim=-1).mean(),
            "meanflow_mse": sq_err.mean()}  # fmt: skip
    for low, high in ((0.0, 0.33), (0.33, 0.67), (0.67, 1.0)):  # where along the flow the fit is off
        in_range = ((t >= low) & (t < high)).squeeze(-1).float()
        info[f"meanflow_mse_t{low:.2f}-{high:.2f}"] = (sq_err.detach() * in_range).sum() / in_range.sum().clamp_min(1)
    return loss, info


# ====================================================================================================================
# 4. Acting: one network evaluation per candidate, best of N by the critics
# ====================================================================================================================


def one_step_sample(actor: MeanFlowActor, obs: torch.Tensor, num_candidates: int) -> torch.Tensor:
    """N one-step samples per state: a = clip(eps - u(s, eps, r=0, t=1), -1, 1). obs (B, S) -> (N, B, A)."""
    noise = torch.randn(num_candidates, obs.shape[0], actor.act_dim, device=obs.device)
    ones = torch.ones(1, 1, device=obs.device)
    return (noise - actor(obs, noise, 0.0 * ones, ones)).clamp(-1.0, 1.0)


def zero_noise_action(actor: MeanFlowActor, obs: torch.Tensor) -> torch.Tensor:
    """The one-step map from the noise's mean, a = clip(0 - u(s, 0, r=0, t=1), -1, 1): one deterministic network
    evaluation per state, the counterpart of SAC's mean action (evaluation only). obs (B, S) -> (B, A)."""
    zeros = torch.zeros(obs.shape[0], actor.act_dim, device=obs.device)
    ones = torch.ones(1, 1, device=obs.device)
    return (zeros - actor(obs, zeros, 0.0 * ones, ones)).clamp(-1.0, 1.0)


def integrate_flow(actor: MeanFlowActor, obs: torch.Tensor, noise: torch.Tensor, num_steps: int) -> torch.Tensor:
    """The actor's flow from noise (t = 1) to an action (t = 0) in `num_steps` MeanFlow steps of equal length,
    z_r = z_t - (t - r) u(s, z_t, r, t). num_steps = 1 is one-step sampling (before the clip). obs (B, S) -> (B, A)."""
    z, times = noise, torch.linspace(1.0, 0.0, num_steps + 1, device=obs.device)
    for t, r in zip(times[:-1], times[1:]):
        z = z - (t - r) * actor(obs, z, r.view(1, 1), t.view(1, 1))
    return z


def multi_step_sample(actor: MeanFlowActor, obs: torch.Tensor, num_steps: int) -> torch.Tensor:
    """The same flow in `num_steps` steps: close to the ODE the actor is trained on, so it shows what one step
    loses. obs (B, S) -> (B, A) in the box."""
    noise = torch.randn(obs.shape[0], actor.act_dim, device=obs.device)
    return integrate_flow(actor, obs, noise, num_steps).clamp(-1.0, 1.0)


def one_step_q_gap(actor: MeanFlowActor, critic: TwinCritic, obs: torch.Tensor, num_steps: int = 20) -> torch.Tensor:
    """mean Q(s, 20-step sample) - mean Q(s, one-step sample) under the current critics (mean of both): > 0 when the
    one-step shortcut lands on worse actions than the flow it was fitted to. A diagnostic, logged every log interval."""
    multi = critic(obs, multi_step_sample(actor, obs, num_steps)).mean()
    return multi - critic(obs, one_step_sample(actor, obs, 1)[0]).mean()


def sample_actions(actor: MeanFlowActor, critic: TwinCritic, obs: torch.Tensor, num_candidates: int,
                   flow_steps: int = 1) -> torch.Tensor:  # fmt: skip
    """The action of the candidate with the highest min(Q1, Q2): obs (B, S) -> (B, A). N = 1 skips the critic.
    flow_steps > 1 (evaluation only, scripts/evaluate.py): the candidates come from the actor's flow in that many
    MeanFlow steps instead of one, which shows what the one-step shortcut loses against the flow it was fitted to."""
    if flow_steps == 1:
        candidates = one_step_sample(actor, obs, num_candidates)
    else:  # the N candidates of all states as one batch of N x B rows (the same noise draws as one-step sampling)
        rows = multi_step_sample(actor, obs.repeat(num_candidates, 1), flow_steps)
        candidates = rows.view(num_candidates, obs.shape[0], actor.act_dim)
    if num_candidates == 1:
        return candidates[0]
    best = critic(obs, candidates).min(dim=0).values.argmax(dim=0)  # (B,)
    return candidates[best, torch.arange(obs.shape[0], device=obs.device)]


# ====================================================================================================================
# 5. Critic: TD target without an entropy term
# ====================================================================================================================


def td_target(
    critic_target: TwinCritic,
    next_obs: torch.Tensor,
    next_action: torch.Tensor,
    reward: torch.Tensor,
    terminated: torch.Tensor,
    gamma: float,
    reward_scale: float,
) -> torch.Tensor:
    """y = reward_scale r + gamma (1 - terminated) min_j Qtarget_j(s', a'). Truncation is not termination."""
    next_q = critic_target(next_obs, next_action).min(dim=0).values
    return reward_scale * reward + gamma * (1.0 - terminated) * next_q


# ====================================================================================================================
# Updates (one critic step, one actor step)
# ====================================================================================================================


def bootstrap_target(args: Args, batch, actor, critic, critic_target) -> torch.Tensor:
    """The TD target y (B,) with the next action a' from the acting sampler (best of --num-target-candidates)."""
    obs, actions, rewards, next_obs, terminated = batch
    with torch.no_grad():
        next_actions = sample_actions(actor, critic, next_obs, args.num_target_candidates)
        return td_target(critic_target, next_obs, next_actions, rewards, terminated, args.gamma, args.reward_scale)


def critic_loss(critic: TwinCritic, obs, actions, y) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_j mean_b (Q_j(s, a) - y)^2 over both critics, and the batch's mean Q (a diagnostic)."""
    q = critic(obs, actions)  # (2, B)
    return (q - y).pow(2).mean(dim=1).sum(), q.detach().mean()


def actor_loss(args: Args, batch, actor, critic, diagnostics: bool = False) -> tuple[torch.Tensor, dict]:
    """The MeanFlow loss on replay states with actions a (--actor-points; default: draws of exp(Q / alpha)) noised to t:
        a_t = mu(t) a + sigma(t) eps,   v = PF-ODE velocity at (a_t, t) from the score estimate,
        loss = adaptive-weighted || u(s, a_t, r, t) - stopgrad(v - (t - r) du/dt) ||^2
    plus, on --distill-rows rows, the one-step map regressed onto the actor's own multi-step flow:
        adaptive-weighted || u(s, eps, 0, 1) - stopgrad(eps - flow_n(s, eps)) ||^2,   n = --distill-steps.
    Only the actor's outputs with (r, t) inputs carry a gradient (to the actor's parameters). The info is empty
    unless `diagnostics` (actor_diagnostics, at log time)."""
    obs, actions = batch[0], batch[1]

    def mean_q(o, a):  # the mean of the two online critics
        return critic(o, a).mean(dim=0)

    with torch.no_grad():
        if args.actor_points == "boltzmann":  # approximate draws of pi* itself: the data the flow should carry
            actions = boltzmann_resample(mean_q, obs, actions.shape[-1], args.num_mc_samples, args.alpha, args.q_norm)
        r, t = sample_time_pair(len(obs), args.t_min, args.flow_matching_fraction, obs.device)
        mu, sigma = vp_mu_sigma(t, args.beta_min, args.beta_max)
        noised = mu * actions + sigma * torch.randn_like(actions)  # the training point: an action noised to time t
        score, score_info = score_estimate(mean_q, obs, noised, t, args.num_mc_samples, args.alpha, args.beta_min,
                                           args.beta_max, args.score_estimator, args.q_norm)  # fmt: skip
        velocity = target_velocity(noised, score, t, args.w, args.beta_min, args.beta_max, args.score_norm)
    loss, flow_info = meanflow_loss(actor, obs, noised, r, t, velocity, args.adaptive_power, diagnostics=diagnostics)
    if args.distill_rows > 0:  # one step regressed onto the actor's own multi-step flow from the same noise
        rows = obs[: args.distill_rows]
        noise = torch.randn(len(rows), actions.shape[-1], device=obs.device)
        with torch.no_grad():
            shortcut = noise - integrate_flow(actor, rows, noise, args.distill_steps)  # u over [0, 1] it implies
        ones = torch.ones(1, 1, device=obs.device)
        sq_err = (actor(rows, noise, 0.0 * ones, ones) - shortcut).pow(2).mean(-1)
        loss = loss + adaptive_weighted(sq_err, args.adaptive_power)
        if diagnostics:
            flow_info["one_step_distill_mse"] = sq_err.detach().mean()
    if not diagnostics:
        return loss, {}
    return loss, {f"losses/{k}": v for k, v in {**score_info, **flow_info}.items()}


def actor_diagnostics(args: Args, batch, actor, critic) -> dict:
    """For the logs, on a small batch and outside the hot path (eager): the score's norm and the softmax's effective
    sample size, the MeanFlow error overall and by range of t, the norms of its target and du/dt, the distillation
    error, and how much Q one step loses against the 20-step flow (one_step_q_gap)."""
    with torch.no_grad():
        _, info = actor_loss(args, batch, actor, critic, diagnostics=True)
        return {**info, "losses/one_step_q_gap": one_step_q_gap(actor, critic, batch[0])}


@dataclass(frozen=True)
class HotPaths:
    """The functions a run calls at every step. Eager by default; with --compile, compiled copies of the same
    functions (the same math, tests/test_compile.py). The update functions take one of these."""

    sample_actions: Callable
    bootstrap_target: Callable
    critic_loss: Callable
    actor_loss: Callable


def hot_paths(compile: bool = False, device: Optional[torch.device] = None) -> HotPaths:
    """The eager hot functions, or with `compile` each wrapped in torch.compile (LeanRL's pattern)."""
    eager = [sample_actions, bootstrap_target, critic_loss, actor_loss]
    return HotPaths(*(common.compile_hot(fn, device or torch.device("cpu")) if compile else fn for fn in eager))


def critic_update(args: Args, batch, actor, critic, critic_target, critic_optimizer,
                  hot: Optional[HotPaths] = None) -> dict:  # fmt: skip
    """One Adam step of both critics toward the TD target. `hot`: the functions to run (default: the eager ones)."""
    hot = hot or hot_paths()
    y = hot.bootstrap_target(args, batch, actor, critic, critic_target)
    loss, q_mean = hot.critic_loss(critic, batch[0], batch[1], y)
    common.check_finite("losses/critic_loss", loss)
    critic_optimizer.zero_grad(set_to_none=True)
    loss.backward()
    critic_optimizer.step()
    return {"losses/critic_loss": loss.detach(), "losses/q_values": q_mean}


def actor_update(args: Args, batch, actor, critic, actor_optimizer, hot: Optional[HotPaths] = None) -> dict:
    """One Adam step of the actor on the MeanFlow loss. `hot`: the functions to run (default: the eager ones)."""
    hot = hot or hot_paths()
    loss, info = hot.actor_loss(args, batch, actor, critic)
    common.check_finite("losses/actor_loss", loss)
    actor_optimizer.zero_grad(set_to_none=True)
    loss.backward()
    actor_optimizer.step()
    return {"losses/actor_loss": loss.detach(), **info}


# ====================================================================================================================
# Saved models
# ====================================================================================================================


def build_networks(args: Args, obs_dim: int, act_dim: int, device):
    actor = MeanFlowActor(obs_dim, act_dim, args.hidden_dim, args.num_hidden).to(device)
    critic = TwinCritic(obs_dim, act_dim, args.hidden_dim, args.num_hidden).to(device)
    return actor, critic


def load_policy(path: str, num_candidates: Optional[int] = None, device: str = "cpu", flow_steps: int = 1):
    """Load a model saved with --save-model, or a run's checkpoint.pt, and return (policy, args): policy(obs (B, S)
    tensor) -> actions in [-1, 1], best of `num_candidates` (default: the training run's N; 1 = the pure one-step
    policy), each candidate from `flow_steps` MeanFlow steps (1: the one-step policy)."""
    payload = common.load_model(path, ALGORITHM)
    args = Args(**payload["args"])
    actor, critic = build_networks(args, payload["obs_dim"], payload["act_dim"], device)
    actor.load_state_dict(payload["actor"])
    critic.load_state_dict(payload["critic"])
    n = num_candidates or args.num_candidates

    @torch.no_grad()
    def policy(obs: torch.Tensor) -> torch.Tensor:
        return sample_actions(actor, critic, obs.to(device), n, flow_steps)

    return policy, args


def validate(args: Args) -> None:
    """Every numeric flag in its valid range, then the env id; anything else stops with one sentence (exit status 2)."""
    common.check_positive(args, ["total_timesteps", "num_envs", "learning_starts", "buffer_size", "batch_size",
                                 "actor_lr", "critic_lr", "reward_scale", "hidden_dim", "num_hidden", "eval_frequency",
                                 "eval_episodes", "log_frequency", "checkpoint_frequency", "num_mc_samples",
                                 "beta_max", "alpha", "w", "num_candidates"])  # fmt: skip
    common.check_ranges(args, seed="[0, 4294967295]", gamma="[0, 1]", tau="(0, 1]", num_mc_samples="[2, inf)",
                        beta_min="[0, inf)", t_min="(0, 0.5)", flow_matching_fraction="[0, 1]",
                        adaptive_power="[0, inf)", exploration_noise="[0, inf)", distill_rows="[0, inf)",
                        distill_steps="[1, inf)")  # fmt: skip
    if args.num_target_candidates is not None:
        common.check_positive(args, ["num_target_candidates"])
    common.require(
        args.batch_size <= args.learning_starts,
        f"--batch-size ({args.batch_size}) must not exceed --learning-starts ({args.learning_starts}).",
    )
    common.require(args.beta_min < args.beta_max,
                   f"--beta-min ({args.beta_min}) must be below --beta-max ({args.beta_max}).")  # fmt: skip
    common.require(args.buffer_size >= args.num_envs,
                   f"--buffer-size ({args.buffer_size}) must be at least --num-envs ({args.num_envs}).")  # fmt: skip
    common.validate_env_id(args.env_id)


# ====================================================================================================================
# Training
# ====================================================================================================================


def main(argv: Optional[list[str]] = None) -> None:
    """Train from the command line `argv` (default: sys.argv[1:])."""
    import tyro

    args = tyro.cli(Args, args=argv)
    if args.resume:  # the checkpoint's arguments, with the flags that may change taken from the command line
        args = common.resume_args(args, args.resume, ALGORITHM, argv)
    validate(args)
    if args.num_target_candidates is None:
        args.num_target_candidates = args.num_candidates
    run_dir = common.run_dir_for(args)
    common.seed_everything(args.seed, args.torch_deterministic)
    device = common.pick_device(args.cuda)
    hot = hot_paths(args.compile, device)  # the eager functions, or compiled copies of them
    envs = common.make_vector_env(args.env_id, args.num_envs, args.seed,
                                  os.path.join(run_dir, "videos") if args.capture_video else None)  # fmt: skip
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    act_dim = int(np.prod(envs.single_action_space.shape))

    actor, critic = build_networks(args, obs_dim, act_dim, device)
    critic_target = build_networks(args, obs_dim, act_dim, device)[1]
    critic_target.load_state_dict(critic.state_dict())
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.actor_lr)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.critic_lr)
    rb = ReplayBuffer(min(args.buffer_size, args.total_timesteps), obs_dim, act_dim, device)
    # global_step, updates, when to log / evaluate / checkpoint (set by Run), and how often actions hit the box edge:
    # all saved in checkpoints and restored on --resume
    step = {"bound_hits": 0.0, "acting_steps": 0}
    run = common.Run(ALGORITHM, args, run_dir, envs, {"actor": actor, "critic": critic, "critic_target": critic_target},
                     {"actor": actor_optimizer, "critic": critic_optimizer}, rb, step)  # fmt: skip

    def policy_for(n: int):
        @torch.no_grad()
        def policy(o):
            return hot.sample_actions(actor, critic, o, n)

        return policy

    obs, _ = envs.reset(seed=args.seed + step["global_step"])  # in-flight episodes restart after a resume
    last_return, update_info = None, {}
    with run.stop_on_non_finite():
        while step["global_step"] < args.total_timesteps:
            # ---- act: uniform warm-up, then the best of N one-step candidates ----
            if step["global_step"] < args.learning_starts:
                actions = envs.action_space.sample()
            else:
                with torch.no_grad():
                    obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
                    action_t = hot.sample_actions(actor, critic, obs_t, args.num_candidates)
                    if args.exploration_noise > 0:
                        action_t = action_t + args.exploration_noise * torch.randn_like(action_t)
                actions = action_t.clamp(-1.0, 1.0).cpu().numpy()
                common.check_finite("actions", actions)
                step["bound_hits"] += float((np.abs(actions) > 0.999).mean())
                step["acting_steps"] += 1
            next_obs, rewards, terminated, truncated, infos = envs.step(actions)
            global_step = step["global_step"] = step["global_step"] + args.num_envs
            for episode_return, episode_length in common.finished_episodes(infos):
                last_return = episode_return
                run.logger.scalars({"charts/episodic_return": episode_return,
                                    "charts/episodic_length": episode_length}, global_step)  # fmt: skip

            # ---- store: the real next observation (the final one where an episode ended) ----
            real_next_obs = common.real_next_obs(next_obs, infos)
            common.check_finite("rewards", rewards)  # a NaN from the env never enters the buffer
            common.check_finite("observations", real_next_obs)
            rb.add(obs, real_next_obs, actions, rewards, terminated)
            obs = next_obs

            # ---- learn: one critic and one actor update per vector step ----
            if global_step >= args.learning_starts:
                batch = rb.sample(args.batch_size)
                update_info = critic_update(args, batch, actor, critic, critic_target, critic_optimizer, hot)
                update_info.update(actor_update(args, batch, actor, critic, actor_optimizer, hot))
                common.polyak_update(critic_target, critic, args.tau)
                step["updates"] += 1

            # ---- log: the update's losses, and the actor's fit on 64 replay rows (eager, outside the hot path) ----
            if run.log_due():
                diagnostics = actor_diagnostics(args, rb.sample(64), actor, critic) if update_info else {}
                bounds = step["bound_hits"] / max(step["acting_steps"], 1)
                sps = run.progress.rate() or 0.0  # steps/s over the last 30 s of this phase (warm-up or training)
                run.logger.scalars({**update_info, **diagnostics, "charts/action_bound_fraction": bounds,
                                    "charts/SPS": sps, "charts/updates": step["updates"]}, global_step)  # fmt: skip
            run.progress.update(global_step, step["updates"], last_return)

            # ---- evaluate: best-of-N (the protocol), N = 1 (the one-step actor alone) and its zero-noise action ----
            if run.eval_due():
                eval_seed = args.seed + 1_000_000 + global_step
                returns_n, _ = common.evaluate(policy_for(args.num_candidates), args.env_id, args.eval_episodes,
                                               eval_seed, device)  # fmt: skip
                returns_1, _ = common.evaluate(policy_for(1), args.env_id, args.eval_episodes, eval_seed, device)
                returns_0, _ = common.evaluate(torch.no_grad()(lambda o: zero_noise_action(actor, o)), args.env_id,
                                               args.eval_episodes, eval_seed, device)  # fmt: skip
                run.logger.scalars({"eval/episodic_return": returns_n.mean(),
                                    "eval/episodic_return_std": returns_n.std(),
                                    "eval/episodic_return_n1": returns_1.mean(),
                                    "eval/episodic_return_zero_noise": returns_0.mean()}, global_step)  # fmt: skip
                run.progress.write(f"eval at {global_step}: best-of-{args.num_candidates} {returns_n.mean():.1f} +- "
                                   f"{returns_n.std():.1f}, N=1 {returns_1.mean():.1f}, "
                                   f"zero noise {returns_0.mean():.1f}")  # fmt: skip

            # ---- checkpoint: periodically, and on SIGINT / SIGTERM (then stop) ----
            if run.checkpoint_and_stop():
                break
    run.finish({"obs_dim": obs_dim, "act_dim": act_dim, "actor": actor.state_dict(), "critic": critic.state_dict()})


if __name__ == "__main__":
    main()
