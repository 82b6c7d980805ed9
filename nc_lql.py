"""NC-LQL: Noise-Conditioned Langevin Q-Learning, in one file (plain LQL as an ablation flag).

Paper: Ki, Ahn, Kim, Lee, "Direct Soft-Policy Sampling via Langevin Dynamics", arXiv 2602.07873 (2026).

There is no actor. The soft policy pi(a|s) ~ exp(w Q(s, a)) has score w grad_a Q(s, a), so an action is drawn by
Langevin dynamics on the critic. Plain Langevin mixes badly on a rugged Q, so the critic takes a noise level l as
input and Q(s, a~, l) is trained to be the clean Q smoothed by Gaussian noise of scale sigma_l; the sampler anneals
from the smoothest landscape (global moves) to the sharp one (mode refinement), as noise-conditioned score networks do.

A default chain (the table in `annealed_langevin`): 20 steps, two per level from sigma = 0.1 to 0.001, each
x = clip(x + 0.5 eps_l w g + sqrt(eps_l) z), g the unit gradient of Q1 + Q2, w = 500. The push 0.5 eps_l w is 250 at
the coarsest level, about 4 at level 4 and 0.025 at the finest: the first levels overshoot the box and the clip puts
each coordinate on the face its gradient points to (the "global moves"); the last levels refine. The best chain and
the TD target use min(Q1, Q2) at the clean level L-1.

Every default, the network, its initialisation, the sampler and the order of the two critic steps follow the authors'
released JAX code. Plain LQL (`--lql`) is not in the release: one noise level, no denoising loss, a constant step
size of our choice (docs/nc_lql.md). Run: python nc_lql.py --env-id Hopper-v4 [--compile] [--lql]
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import tyro

import common

ALGORITHM = "nc_lql"


@dataclass
class Args(common.RunArgs):  # the run's flags (seed, --cuda, --compile, --track, checkpoints) are common.RunArgs'
    """Train NC-LQL: actions from annealed Langevin dynamics on a noise-conditioned twin critic (docs/nc_lql.md)."""

    exp_name: str = "nc_lql"
    wandb_project_name: str = "nc_lql"

    env_id: str = "Hopper-v4"
    """the gymnasium id of a continuous-action environment"""
    total_timesteps: int = 5_000_000
    """environment transitions in total, summed over the parallel envs"""
    num_envs: int = 5
    """parallel environments; one critic update (TD step + denoising step) per vector step"""
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
    critic_lr: float = 1e-4
    """Adam learning rate of the critics (constant, no clipping)"""
    hidden_dim: int = 256
    """width of the critics' hidden layers"""
    num_hidden: int = 3
    """number of hidden layers of each critic"""
    eval_frequency: int = 125_000
    """evaluate every this many environment transitions"""
    eval_episodes: int = 20
    """episodes per evaluation (stepped as one batch), with the same stochastic sampler"""
    log_frequency: int = 5_000
    """log losses and diagnostics every this many environment transitions"""

    # --- NC-LQL ---
    num_levels: int = 10
    """L: noise levels, geometric from sigma_max (level 0) to sigma_min (level L-1, the clean critic); --lql: 1"""
    sigma_max: float = 0.1
    """largest noise scale"""
    sigma_min: float = 0.001
    """the clean level's scale: never added to an action, it sets the step sizes' ratio (sigma_l / sigma_min)^2"""
    steps_per_level: int = 2
    """T: Langevin steps at each level"""
    step_lr: float = 1e-4
    """eps_l = step_lr (sigma_l / sigma_min)^2"""
    w: float = 500.0
    """inverse temperature of the soft policy exp(w Q); with gradient normalisation a step length"""
    grad_norm: bool = True
    """unit-normalise the action gradient of Q in every Langevin step"""
    num_chains: int = 1
    """N: Langevin chains per decision; the one with the largest min(Q1, Q2) at the clean level is taken"""
    lql: bool = False
    """plain LQL: one level, no denoising loss, a constant step size (--lql-step-size) for all steps"""
    lql_steps: int = 20
    """LQL: Langevin steps per action (the release's NC-LQL also takes 20 = L x T gradient steps)"""
    lql_step_size: float = 1e-3
    """LQL: constant step size eps [ours, docs/nc_lql.md "LQL's step size"]"""


# ==== Noise levels and step sizes ====================================================================================
def noise_schedule(num_levels: int, sigma_max: float, sigma_min: float) -> list[float]:
    """sigma_l = exp(linspace(log sigma_max, log sigma_min, L))[l], l = 0 (coarsest) .. L-1 (finest)."""
    if num_levels == 1:
        return [sigma_max]
    step = (math.log(sigma_min) - math.log(sigma_max)) / (num_levels - 1)
    return [math.exp(math.log(sigma_max) + level * step) for level in range(num_levels)]  # plain floats: compiles


def langevin_step_sizes(sigmas: list[float], step_lr: float) -> list[float]:
    """eps_l = step_lr (sigma_l / sigma_min)^2, sigma_min = sigmas[-1]: from step_lr (sigma_max / sigma_min)^2 (1.0
    with the defaults) at the coarsest level down to step_lr."""
    return [step_lr * (s / sigmas[-1]) ** 2 for s in sigmas]


def num_noise_levels(args: Args) -> int:
    return 1 if args.lql else args.num_levels  # plain LQL: one level, the clean critic


def sampler_schedule(args: Args) -> tuple[list[int], list[float]]:
    """The (level, step size) of each Langevin step: L x T steps for NC-LQL; --lql-steps constant steps at level 0."""
    if args.lql:  # at the one level, 0, which the TD loss trains (its clean level: num_noise_levels - 1)
        return [num_noise_levels(args) - 1] * args.lql_steps, [args.lql_step_size] * args.lql_steps
    eps = langevin_step_sizes(noise_schedule(args.num_levels, args.sigma_max, args.sigma_min), args.step_lr)
    levels = [lvl for lvl in range(args.num_levels) for _ in range(args.steps_per_level)]
    return levels, [eps[lvl] for lvl in levels]


# ==== Noise-conditioned twin critic ==================================================================================
def level_features(level: torch.Tensor, dim: int = 16, base: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of the integer level, scaled by 1 / sqrt(dim): (...,) -> (..., dim)."""
    freqs = base ** (-torch.arange(dim // 2, dtype=torch.float32, device=level.device) / (dim // 2))
    angles = level.float().unsqueeze(-1) * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1) / math.sqrt(dim)


class TwinLinear(nn.Module):
    """The same linear layer of both critics as one (2, in, out) weight, one batched matmul: x (2 or 1 if shared, ...,
    in) -> (2, ..., out). The release's init: weights truncated normal, std 1 / sqrt(fan_in) cut at 2 std, zero bias."""

    def __init__(self, in_dim: int, out_dim: int, fan_in: Optional[int] = None, bias: bool = True):
        super().__init__()
        std = 1.0 / math.sqrt(fan_in or in_dim)
        weight = nn.init.trunc_normal_(torch.empty(2, in_dim, out_dim), std=std, a=-2 * std, b=2 * std)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(2, 1, out_dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # matmul broadcasts an input both critics share (faster compiled than baddbmm on it expanded, docs/speed.md)
        out = torch.matmul(x.reshape(x.shape[0], -1, x.shape[-1]), self.weight)
        out = out if self.bias is None else out + self.bias
        return out.view(2, *x.shape[1:-1], out.shape[-1])


class NoiseConditionedTwinCritic(nn.Module):
    """Q_i(s, a, l), i = 1, 2, in one batched call: (s (..., S), a (..., A), level (...) int) -> (2, ...). Each critic:
    emb(l) = Linear(16, 32) -> Mish -> Linear(32, 16) on sinusoidal features of l, then an MLP with Mish on
    [s, a, emb(l)]. Its first layer is applied input by input, W [s, a, e] + b = (W_s s + b) + W_a a + W_e e, so that
    a Langevin chain projects its fixed state and each level's embedding once (along_chain)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int = 256, num_hidden: int = 3):
        super().__init__()
        fan_in = obs_dim + act_dim + 16
        self.embed_hidden, self.embed_out = TwinLinear(16, 32), TwinLinear(32, 16)
        self.obs_in = TwinLinear(obs_dim, hidden_dim, fan_in)
        self.action_in = TwinLinear(act_dim, hidden_dim, fan_in, bias=False)
        self.level_in = TwinLinear(16, hidden_dim, fan_in, bias=False)
        self.hidden = nn.ModuleList(TwinLinear(hidden_dim, hidden_dim) for _ in range(num_hidden - 1))
        self.out = TwinLinear(hidden_dim, 1)

    def embed(self, level: torch.Tensor) -> torch.Tensor:
        """Each critic's embedding of integer levels: (...) -> (2, ..., 16)."""
        return self.embed_out(common.mish(self.embed_hidden(level_features(level)[None])))

    def trunk(self, pre_activation: torch.Tensor) -> torch.Tensor:
        """The rest of both critics from the first layer's pre-activation (2, ..., H) -> Q (2, ...)."""
        h = common.mish(pre_activation)
        for layer in self.hidden:
            h = common.mish(layer(h))
        return self.out(h).squeeze(-1)

    def forward(self, obs: torch.Tensor, action: torch.Tensor, level) -> torch.Tensor:
        """level: an int or a long tensor broadcasting with the leading dims of `action`."""
        level = torch.as_tensor(level, device=obs.device)
        parts = [self.obs_in(obs[None]), self.action_in(action[None]), self.level_in(self.embed(level))]
        lead = torch.broadcast_shapes(*(p.shape[1:-1] for p in parts))
        # right-align each part's leading dims with the broadcast shape, then add; e.g. obs (B, S), action (N, B, A),
        # an int level: parts (2, B, H), (2, N, B, H), (2, H) viewed as (2, 1, B, H), (2, N, B, H), (2, 1, 1, H)
        return self.trunk(sum(p.view(2, *[1] * (len(lead) + 2 - p.dim()), *p.shape[1:]) for p in parts))

    def along_chain(self, obs: torch.Tensor, num_levels: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """Q for fixed states as a function of the actions and a level index: q(x (N, B, A), level int) -> (2, N, B),
        equal to forward(obs, x, level). What does not change along a Langevin chain -- the states' share of the
        first layer and each level embedding's share -- is computed here once, not in each of its 20 steps."""
        fixed = self.obs_in(obs[None]).unsqueeze(1)  # (2, 1, B, H)
        level_part = self.level_in(self.embed(torch.arange(num_levels, device=obs.device)))[:, :, None, None]

        def q(x: torch.Tensor, level: int) -> torch.Tensor:
            return self.trunk(fixed + level_part[:, level] + self.action_in(x[None]))

        return q


# ==== Replay buffer (tensors on the training device; sampling is one gather) =========================================
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


# ==== Annealed Langevin sampler ======================================================================================
def langevin_noise(num_chains: int, batch_size: int, act_dim: int, num_steps: int, device) -> tuple:
    """The sampler's randomness drawn up front: the uniform start (N, B, A) in the box and every step's Gaussian kick
    (num_steps, N, B, A). Passed in, the sampler is deterministic (eager and compiled compared on the same draws)."""
    start = torch.rand(num_chains, batch_size, act_dim, device=device) * 2.0 - 1.0
    return start, torch.randn(num_steps, num_chains, batch_size, act_dim, device=device)


def annealed_langevin(q_fn: Callable, obs: torch.Tensor, act_dim: int, levels: list[int], step_sizes: list[float],
                      w: float, grad_norm: bool = True, num_chains: int = 1,
                      noise: Optional[tuple] = None) -> torch.Tensor:  # fmt: skip
    """Langevin chains on the critic from a uniform start in the box, one step per (level l, step size eps):
        g = grad_x q_fn(s, x, l),  g = g / (||g|| + 1e-8) if grad_norm,  x = clip(x + 0.5 eps w g + sqrt(eps) z, -1, 1)
    obs (B, S) -> x (N, B, A), N = num_chains; q_fn(obs, x (N, B, A), level int) -> Q (..., N, B), summed and
    differentiated in x only with torch.func.grad (no parameter gradients, no graph). `noise`: langevin_noise(...),
    or None to draw it here. Levels and step sizes are Python numbers: no host sync, one unrolled compiled graph.
    With the defaults (eps_l = 1e-4 (sigma_l / 0.001)^2, w = 500, a unit gradient, two steps per level):
        level         0     1     2     3     4     5      6      7       8       9 (clean)
        sigma_l     0.1  0.06  0.036 0.022 0.013 0.0077 0.0046 0.0028  0.0017  0.001
        eps_l       1.0  0.36  0.13  0.046 0.017 0.0060 0.0022 0.00077 0.00028 0.0001
        push        250  90    32    12    4.2   1.5    0.54   0.19    0.070   0.025   (0.5 eps_l w)
        noise std   1.0  0.60  0.36  0.22  0.13  0.077  0.046  0.028   0.017   0.010   (sqrt(eps_l))"""
    if noise is None:
        noise = langevin_noise(num_chains, obs.shape[0], act_dim, len(levels), obs.device)
    x, kicks = noise
    for i, (level, eps) in enumerate(zip(levels, step_sizes)):
        g = torch.func.grad(lambda x_, lvl=level: q_fn(obs, x_, lvl).sum())(x)
        if grad_norm:
            g = g / (g.norm(dim=-1, keepdim=True) + 1e-8)
        x = (x + 0.5 * eps * w * g + math.sqrt(eps) * kicks[i]).clamp(-1.0, 1.0)
    return x


def sample_actions(critic: NoiseConditionedTwinCritic, obs: torch.Tensor, args: Args, act_dim: int,
                   noise: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:  # fmt: skip
    """Actions (B, A) by the annealed sampler, the best of N chains by min(Q1, Q2) at the clean level; no graph."""
    levels, step_sizes = sampler_schedule(args)
    q_along = critic.along_chain(obs, max(levels) + 1)
    # the chains climb Q1 + Q2 (with grad_norm only its direction counts; without, it doubles w); min(Q1, Q2) chooses
    chains = annealed_langevin(lambda _, x, level: q_along(x, level), obs, act_dim, levels, step_sizes, args.w,
                               args.grad_norm, args.num_chains, noise)  # fmt: skip
    if args.num_chains == 1:
        return chains[0]
    best = q_along(chains, levels[-1]).min(dim=0).values.argmax(dim=0)
    return chains[best, torch.arange(obs.shape[0], device=obs.device)]


# ==== Critic losses and the two-step update ==========================================================================
def regression_loss(critic, obs, actions, level, target) -> torch.Tensor:
    """Sum over both critics of mean_b (Q_i(s, a, l) - target)^2: the TD step (clean level, target y) and the
    denoising step (l < L-1, a perturbed by sigma_l, target qbar: Q(., ., l) becomes Q smoothed at scale sigma_l)."""
    return (critic(obs, actions, level) - target).pow(2).mean(dim=1).sum()


def update_targets(args: Args, batch, critic, critic_target, sigmas: torch.Tensor, act_dim: int):
    """What the two critic steps regress onto, all from the critics BEFORE this update (no gradient):
        a'   = sampler(s')                                  (online critics)
        y    = reward_scale r + gamma (1 - terminated) min_j Qtarget_j(s', a', L-1)
        qbar = mean_j Q_j(s, a, L-1)
        l ~ U{0, ..., L-2} per sample,  a_l = a + sigma_l n   (not clipped; the clean level is never perturbed)
    Regressed onto qbar at a_l, Q(s, ., l) learns the mean clean Q over the buffer actions that could have produced
    a_l (not a Gaussian smoothing of Q everywhere): it is trained only within about sigma_l of buffer actions.
    Returns (y, qbar, l, a_l)."""
    obs, actions, rewards, next_obs, terminated = batch
    clean = len(sigmas) - 1
    with torch.no_grad():
        next_actions = sample_actions(critic, next_obs, args, act_dim)
        next_q = critic_target(next_obs, next_actions, clean).min(dim=0).values
        y = args.reward_scale * rewards + args.gamma * (1.0 - terminated) * next_q
        q_bar = critic(obs, actions, clean).mean(dim=0)
        levels = torch.randint(0, max(clean, 1), (len(obs),), device=obs.device)  # 0 .. L-2
        noised = actions + sigmas[levels].unsqueeze(-1) * torch.randn_like(actions)
    return y, q_bar, levels, noised


def hot_paths(compile: bool = False, device: Optional[torch.device] = None, cudagraphs: bool = False):
    """The per-step functions by name, eager or (--compile) compiled copies of the same math; the update takes them."""
    return common.hot_functions([sample_actions, update_targets, regression_loss], compile, device, cudagraphs)


def critic_update(args: Args, batch, critic, critic_target, optimizer, sigmas: torch.Tensor, act_dim: int,
                  hot: Optional[SimpleNamespace] = None) -> dict:  # fmt: skip
    """One update in the release's order: targets from the pre-update critics, a TD step, then a denoising step. One
    Adam over both critics' stacked parameters equals one Adam per critic (it acts elementwise; the losses are summed).
    `hot`: the functions to run (default: the eager ones)."""
    hot = hot or hot_paths()
    obs, actions = batch[0], batch[1]
    y, q_bar, levels, noised = hot.update_targets(args, batch, critic, critic_target, sigmas, act_dim)
    loss_td = hot.regression_loss(critic, obs, actions, len(sigmas) - 1, y)  # TD step at the clean level
    info = {"losses/td_loss": common.optimizer_step(optimizer, loss_td, "losses/td_loss"),
            "losses/q_values": q_bar.mean(), "losses/td_target": y.mean()}  # fmt: skip
    if not args.lql:  # denoising step: Q(., ., l) regressed onto the pre-update clean mean critic
        loss_dn = hot.regression_loss(critic, obs, noised, levels, q_bar)
        info["losses/denoising_loss"] = common.optimizer_step(optimizer, loss_dn, "losses/denoising_loss")
    return info


# ==== Saved models and validation ====================================================================================
def load_policy(path: str, device: str = "cpu"):
    """(policy, args) from a --save-model file or a checkpoint.pt: policy(obs (B, S)) -> actions in [-1, 1]."""
    payload = common.load_model(path, ALGORITHM)
    args, act_dim = common.known_args(Args, payload["args"]), payload["act_dim"]
    critic = NoiseConditionedTwinCritic(payload["obs_dim"], act_dim, args.hidden_dim, args.num_hidden).to(device)
    critic.load_state_dict(payload["critic"])
    return torch.no_grad()(lambda obs: sample_actions(critic, obs.to(device), args, act_dim)), args


def validate(args: Args) -> None:
    """Every flag in its valid range, then the env id; anything else stops with one sentence (exit status 2)."""
    common.check_positive(args, ["num_levels", "sigma_max", "sigma_min", "steps_per_level", "step_lr", "w",
                                 "num_chains", "lql_steps", "lql_step_size"])  # fmt: skip
    common.require(args.sigma_min < args.sigma_max,
                   f"--sigma-min ({args.sigma_min}) must be below --sigma-max ({args.sigma_max}).")  # fmt: skip
    common.require(args.lql or args.num_levels >= 2, "NC-LQL needs --num-levels of at least 2 (or use --lql).")
    common.require(
        not args.lql or args.num_levels in (1, Args.num_levels),
        f"--lql samples and trains at one noise level: leave out --num-levels (got {args.num_levels}).",
    )
    common.validate_run(args)


# ==== Training =======================================================================================================
def main(argv: Optional[list[str]] = None) -> None:
    """Train from the command line `argv` (default: sys.argv[1:])."""
    args = tyro.cli(Args, args=argv)
    if args.resume:  # the checkpoint's arguments, with the flags that may change taken from the command line
        args = common.resume_args(args, args.resume, ALGORITHM, argv)
    validate(args)
    run_dir = common.run_dir_for(args)
    common.seed_everything(args.seed, args.torch_deterministic)
    device = common.pick_device(args.cuda)
    hot = hot_paths(args.compile, device, args.cudagraphs)  # the eager functions, or compiled copies of them
    envs = common.make_vector_env(args.env_id, args.num_envs, args.seed,
                                  os.path.join(run_dir, "videos") if args.capture_video else None)  # fmt: skip
    obs_dim, act_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]

    critic = NoiseConditionedTwinCritic(obs_dim, act_dim, args.hidden_dim, args.num_hidden).to(device)
    critic_target = NoiseConditionedTwinCritic(obs_dim, act_dim, args.hidden_dim, args.num_hidden).to(device)
    critic_target.load_state_dict(critic.state_dict())
    optimizer = torch.optim.Adam(critic.parameters(), lr=args.critic_lr)
    sigmas = torch.tensor(noise_schedule(num_noise_levels(args), args.sigma_max, args.sigma_min), device=device)
    rb = ReplayBuffer(min(args.buffer_size, args.total_timesteps), obs_dim, act_dim, device)
    step = {"global_step": 0, "updates": 0}  # env transitions, gradient updates: in checkpoints, back on --resume
    run = common.Run(ALGORITHM, args, run_dir, envs, {"critic": critic, "critic_target": critic_target},
                     {"critic": optimizer}, rb, step)  # fmt: skip

    policy = torch.no_grad()(lambda o: hot.sample_actions(critic, o, args, act_dim))  # acting and evaluation
    obs, _ = envs.reset(seed=args.seed + step["global_step"])  # in-flight episodes restart after a resume
    last_return, update_info = None, {}
    with run.stop_on_non_finite():
        while step["global_step"] < args.total_timesteps:
            # ---- act: uniform warm-up, then one annealed Langevin chain per state ----
            if step["global_step"] < args.learning_starts:
                actions = envs.action_space.sample()
            else:
                actions = policy(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
                common.check_finite("actions", actions)
            next_obs, rewards, terminated, truncated, infos = envs.step(actions)
            global_step = step["global_step"] = step["global_step"] + args.num_envs
            last_return = run.log_episodes(infos, last_return)

            # ---- store: the real next observation (the final one where an episode ended) ----
            real_next_obs = common.real_next_obs(next_obs, infos)
            common.check_finite("rewards", rewards)  # a NaN from the env never enters the buffer
            common.check_finite("observations", real_next_obs)
            rb.add(obs, real_next_obs, actions, rewards, terminated)
            obs = next_obs

            # ---- learn: one two-step critic update per vector step, once the buffer holds --learning-starts rows ----
            if global_step >= args.learning_starts and rb.size >= min(args.learning_starts, rb.capacity):
                common.cuda_graph_step(args)
                update_info = critic_update(args, rb.sample(args.batch_size), critic, critic_target, optimizer,
                                            sigmas, act_dim, hot)  # fmt: skip
                common.polyak_update(critic_target, critic, args.tau)
                step["updates"] += 1

            # ---- log ----
            if run.log_due():
                charts = {"charts/SPS": run.progress.rate(), "charts/updates": step["updates"]}
                run.logger.scalars({**update_info, **charts}, global_step)
            run.progress.update(global_step, step["updates"], last_return)

            # ---- evaluate with the same stochastic sampler ----
            if run.eval_due():
                run.evaluate({"return": policy}, device)

            # ---- checkpoint: periodically, and on SIGINT / SIGTERM (then stop) ----
            if run.checkpoint_and_stop():
                break
    run.finish({"obs_dim": obs_dim, "act_dim": act_dim, "critic": critic.state_dict()})


if __name__ == "__main__":
    main()
