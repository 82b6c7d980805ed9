"""NC-LQL: Noise-Conditioned Langevin Q-Learning, in one file (plain LQL as an ablation flag).

Paper: Ki, Ahn, Kim, Lee, "Direct Soft-Policy Sampling via Langevin Dynamics", arXiv 2602.07873 (2026).

The idea. There is no actor. The soft policy pi(a|s) ~ exp(w Q(s, a)) has score w grad_a Q(s, a), so an action
is drawn by Langevin dynamics on the critic. Plain Langevin mixes badly on a rugged Q, so the critic takes a noise
level l as input, and Q(s, a~, l) is trained to be the clean Q smoothed by Gaussian noise of scale sigma_l. The
sampler anneals from the smoothest landscape (large sigma: global moves) to the sharp one (mode refinement), as
in noise-conditioned score networks.

Faithfulness. Every default, the network, its initialisation, the sampler and the order of the two critic steps
follow the authors' released JAX code. Plain LQL (`--lql`) is not in the
release: one noise level, no denoising loss, a constant step size that we chose (README, "LQL's step size").

Run:   python nc_lql.py --env-id Hopper-v4
       python nc_lql.py --env-id Hopper-v4 --compile    # the same math, compiled (README, Speed)
       python nc_lql.py --env-id Hopper-v4 --lql        # the plain-LQL ablation
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn

import common

ALGORITHM = "nc_lql"


@dataclass
class Args:
    exp_name: str = "nc_lql"
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
    wandb_project_name: str = "nc_lql"
    """the wandb project name"""
    wandb_entity: Optional[str] = None
    """the wandb entity (team)"""
    capture_video: bool = False
    """record videos of the first training env to runs/{run_name}/videos"""
    save_model: bool = False
    """save the critics to runs/{run_name}/{exp_name}.pt at the end"""
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
    """L: noise levels, geometric from sigma_max (level 0) to sigma_min (level L-1, the clean critic)"""
    sigma_max: float = 0.1
    """largest noise scale"""
    sigma_min: float = 0.001
    """smallest noise scale"""
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
    """LQL: constant step size eps [our choice, README "LQL's step size"]"""


# ====================================================================================================================
# Noise levels and step sizes
# ====================================================================================================================


def noise_schedule(num_levels: int, sigma_max: float, sigma_min: float) -> list[float]:
    """sigma_l = exp(linspace(log sigma_max, log sigma_min, L))[l], l = 0 (coarsest) .. L-1 (finest)."""
    if num_levels == 1:
        return [sigma_max]
    step = (math.log(sigma_min) - math.log(sigma_max)) / (num_levels - 1)
    return [math.exp(math.log(sigma_max) + level * step) for level in range(num_levels)]  # plain floats: compiles


def langevin_step_sizes(sigmas: list[float], step_lr: float) -> list[float]:
    """eps_l = step_lr (sigma_l / sigma_min)^2, sigma_min = sigmas[-1]: 1.0 at the coarsest level down to step_lr."""
    return [step_lr * (s / sigmas[-1]) ** 2 for s in sigmas]


def sampler_schedule(args: Args) -> tuple[list[int], list[float]]:
    """The (network level, step size) of every Langevin step, in order: L x T steps for NC-LQL, or lql_steps
    steps at level 0 with the constant --lql-step-size for plain LQL."""
    if args.lql:
        return [0] * args.lql_steps, [args.lql_step_size] * args.lql_steps
    eps = langevin_step_sizes(noise_schedule(args.num_levels, args.sigma_max, args.sigma_min), args.step_lr)
    levels = [lvl for lvl in range(args.num_levels) for _ in range(args.steps_per_level)]
    return levels, [eps[lvl] for lvl in levels]


# ====================================================================================================================
# Noise-conditioned twin critic
# ====================================================================================================================


def level_features(level: torch.Tensor, dim: int = 16, base: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of the integer level, scaled by 1 / sqrt(dim): (...,) -> (..., dim)."""
    freqs = base ** (-torch.arange(dim // 2, dtype=torch.float32, device=level.device) / (dim // 2))
    angles = level.float().unsqueeze(-1) * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1) / math.sqrt(dim)


class NoiseConditionedTwinCritic(nn.Module):
    """Q_i(s, a, l) for i = 1, 2 in one batched call: (s (..., S), a (..., A), level (...) int) -> (2, ...).

    Each critic: emb(l) = Linear(16, 32) -> Mish -> Linear(32, 16) on sinusoidal features of l, then an MLP on
    [s, a, emb(l)] with 3 hidden layers of 256 and Mish. The release's initialisation: truncated normal with std
    1 / sqrt(fan_in) cut at 2 std, zero biases.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int = 256, num_hidden: int = 3):
        super().__init__()
        self.embed = common.EnsembleMLP(2, [16], 32, 1, 16)
        self.q = common.EnsembleMLP(2, [obs_dim, act_dim, 16], hidden_dim, num_hidden, 1,
                                    per_member=[False, False, True])  # fmt: skip
        for net in (self.embed, self.q):
            for weight, bias in zip(net.weights, net.biases):
                std = 1.0 / math.sqrt(weight.shape[1])
                nn.init.trunc_normal_(weight.data, std=std, a=-2 * std, b=2 * std)
                nn.init.zeros_(bias.data)

    def forward(self, obs: torch.Tensor, action: torch.Tensor, level) -> torch.Tensor:
        """level: an int or a long tensor broadcasting with the leading dims of `action`."""
        level = torch.as_tensor(level, device=obs.device)
        return self.q(obs, action, self.embed(level_features(level))).squeeze(-1)

    def along_chain(self, obs: torch.Tensor, num_levels: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """Q for fixed states as a function of the actions and a level index: q(x (N, B, A), level int) -> (2, N, B),
        equal to forward(obs, x, level). What does not change along a Langevin chain -- the states' share of the
        first layer and each level embedding's share -- is computed here once, not in each of its 20 steps."""
        fixed = self.q.biases[0].unsqueeze(1) + self.q.project(0, obs).unsqueeze(1)  # (2, 1, B, H)
        level_emb = self.embed(level_features(torch.arange(num_levels, device=obs.device)))  # (2, L, 16)
        level_part = self.q.project(2, level_emb).unsqueeze(2).unsqueeze(2)  # (2, L, 1, 1, H)

        def q(x: torch.Tensor, level: int) -> torch.Tensor:
            return self.q.trunk(fixed + level_part[:, level] + self.q.project(1, x)).squeeze(-1)

        return q


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
        idx = (self.pos + torch.arange(len(obs))) % self.capacity
        for buf, x in ((self.obs, obs), (self.next_obs, next_obs), (self.actions, actions),
                       (self.rewards, rewards), (self.terminated, terminated)):  # fmt: skip
            buf[idx] = torch.as_tensor(np.asarray(x), dtype=torch.float32).to(self.device)
        self.pos = (self.pos + len(obs)) % self.capacity
        self.size = min(self.size + len(obs), self.capacity)

    def sample(self, batch_size: int):
        idx = torch.randint(0, self.size, (batch_size,), device=self.device)
        return self.obs[idx], self.actions[idx], self.rewards[idx], self.next_obs[idx], self.terminated[idx]


# ====================================================================================================================
# Annealed Langevin sampler
# ====================================================================================================================


def langevin_noise(num_chains: int, batch_size: int, act_dim: int, num_steps: int, device) -> tuple:
    """The sampler's randomness, drawn up front: the uniform start x0 (N, B, A) in the box and the Gaussian kick of
    every step, (num_steps, N, B, A). Passing it in makes the sampler a deterministic function (tests compare the
    eager and compiled samplers on the same draws)."""
    start = torch.rand(num_chains, batch_size, act_dim, device=device) * 2.0 - 1.0
    return start, torch.randn(num_steps, num_chains, batch_size, act_dim, device=device)


def annealed_langevin(
    q_fn: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
    obs: torch.Tensor,
    act_dim: int,
    levels: list[int],
    step_sizes: list[float],
    w: float,
    grad_norm: bool = True,
    num_chains: int = 1,
    noise: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """Langevin chains on the critic, one step per (level, step size) pair, from a uniform start in the box.

        g = grad_x q_fn(s, x, l)                      (q_fn: any function differentiable in x, summed over critics)
        g = g / (||g|| + 1e-8)                         if grad_norm
        x = clip(x + 0.5 eps w g + sqrt(eps) z, -1, 1),   z ~ N(0, I)

    obs (B, S) -> x (N, B, A) with N = num_chains. q_fn(obs (B, S), x (N, B, A), level index int) returns Q values
    (..., N, B); their sum is differentiated with torch.func.grad, which takes the gradient in x only (no parameter
    gradients, no graph kept) and compiles. `noise` = langevin_noise(...) or None to draw it here. The loop has no
    host sync: levels and step sizes are Python numbers, so torch.compile unrolls it into one graph.
    """
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
    """Actions (B, A) from the annealed sampler on the online critics; best of N chains by min(Q1, Q2) at the clean
    level when num_chains > 1. Run it under torch.no_grad(): nothing here needs a graph."""
    levels, step_sizes = sampler_schedule(args)
    q_along = critic.along_chain(obs, max(levels) + 1)
    chains = annealed_langevin(lambda _, x, level: q_along(x, level), obs, act_dim, levels, step_sizes, args.w,
                               args.grad_norm, args.num_chains, noise)  # fmt: skip
    if args.num_chains == 1:
        return chains[0]
    best = q_along(chains, levels[-1]).min(dim=0).values.argmax(dim=0)
    return chains[best, torch.arange(obs.shape[0], device=obs.device)]


# ====================================================================================================================
# Critic losses and the two-step update
# ====================================================================================================================


def td_loss(critic, obs, actions, clean_level, y) -> torch.Tensor:
    """Sum over both critics of mean (Q_i(s, a, L-1) - y)^2."""
    return (critic(obs, actions, clean_level) - y).pow(2).mean(dim=1).sum()


def denoising_loss(critic, obs, noised_actions, levels, q_bar) -> torch.Tensor:
    """Sum over both critics of mean (Q_i(s, a + sigma_l n, l) - q_bar)^2: each noisy level regresses onto the
    clean critic's value of the unperturbed action, so Q(., ., l) becomes Q smoothed by a Gaussian of scale sigma_l."""
    return (critic(obs, noised_actions, levels) - q_bar).pow(2).mean(dim=1).sum()


def update_targets(args: Args, batch, critic, critic_target, sigmas: torch.Tensor, act_dim: int):
    """What the two critic steps regress onto, all from the critics BEFORE this update (no gradient):
        a'   = sampler(s')                                  (online critics)
        y    = reward_scale r + gamma (1 - terminated) min_j Qtarget_j(s', a', L-1)
        qbar = mean_j Q_j(s, a, L-1)
        l ~ U{0, ..., L-2} per sample,  a_l = a + sigma_l n   (not clipped; the clean level is never perturbed)
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


@dataclass(frozen=True)
class HotPaths:
    """The functions a run calls at every step. Eager by default; with --compile, compiled copies of the same
    functions (the same math, tests/test_compile.py). critic_update takes one of these."""

    sample_actions: Callable
    update_targets: Callable
    td_loss: Callable
    denoising_loss: Callable


def hot_paths(compile: bool = False, device: Optional[torch.device] = None) -> HotPaths:
    """The eager hot functions, or with `compile` each wrapped in torch.compile (LeanRL's pattern)."""
    eager = [sample_actions, update_targets, td_loss, denoising_loss]
    return HotPaths(*(common.compile_hot(fn, device or torch.device("cpu")) if compile else fn for fn in eager))


def critic_update(args: Args, batch, critic, critic_target, optimizer, sigmas: torch.Tensor, act_dim: int,
                  hot: Optional[HotPaths] = None) -> dict:  # fmt: skip
    """One update in the release's order: targets from the pre-update critics, a TD step at the clean level, then
    a denoising step onto the PRE-update mean critic. Both critics share one Adam over their stacked parameters,
    which is the same as one Adam per critic (Adam acts elementwise and the losses are summed over critics).
    `hot`: the functions to run (default: the eager ones)."""
    hot = hot or hot_paths()
    obs, actions = batch[0], batch[1]
    y, q_bar, levels, noised = hot.update_targets(args, batch, critic, critic_target, sigmas, act_dim)

    loss_td = hot.td_loss(critic, obs, actions, len(sigmas) - 1, y)
    common.check_finite("losses/td_loss", loss_td)
    optimizer.zero_grad(set_to_none=True)
    loss_td.backward()
    optimizer.step()
    info = {"losses/td_loss": loss_td.detach(), "losses/q_values": q_bar.mean(), "losses/td_target": y.mean()}

    if not args.lql:
        loss_dn = hot.denoising_loss(critic, obs, noised, levels, q_bar)
        common.check_finite("losses/denoising_loss", loss_dn)
        optimizer.zero_grad(set_to_none=True)
        loss_dn.backward()
        optimizer.step()
        info["losses/denoising_loss"] = loss_dn.detach()
    return info


# ====================================================================================================================
# Saved models and validation
# ====================================================================================================================


def load_policy(path: str, device: str = "cpu"):
    """Load a model saved with --save-model, or a run's checkpoint.pt; return (policy, args), policy(obs (B, S)) ->
    actions in [-1, 1]."""
    payload = common.load_model(path, ALGORITHM)
    args = Args(**payload["args"])
    critic = NoiseConditionedTwinCritic(payload["obs_dim"], payload["act_dim"], args.hidden_dim, args.num_hidden)
    critic.load_state_dict(payload["critic"])
    critic.to(device)

    @torch.no_grad()
    def policy(obs: torch.Tensor) -> torch.Tensor:
        return sample_actions(critic, obs.to(device), args, payload["act_dim"])

    return policy, args


def validate(args: Args) -> None:
    """Every numeric flag in its valid range, then the env id; anything else stops with one sentence (exit status 2)."""
    common.check_positive(args, ["total_timesteps", "num_envs", "learning_starts", "buffer_size", "batch_size",
                                 "critic_lr", "reward_scale", "hidden_dim", "num_hidden", "eval_frequency",
                                 "eval_episodes", "log_frequency", "checkpoint_frequency", "num_levels", "sigma_max",
                                 "sigma_min", "steps_per_level", "step_lr", "w", "num_chains", "lql_steps",
                                 "lql_step_size"])  # fmt: skip
    common.check_ranges(args, seed="[0, 4294967295]", gamma="[0, 1]", tau="(0, 1]")
    common.require(
        args.batch_size <= args.learning_starts,
        f"--batch-size ({args.batch_size}) must not exceed --learning-starts ({args.learning_starts}).",
    )
    common.require(args.sigma_min < args.sigma_max,
                   f"--sigma-min ({args.sigma_min}) must be below --sigma-max ({args.sigma_max}).")  # fmt: skip
    common.require(args.lql or args.num_levels >= 2, "NC-LQL needs --num-levels of at least 2 (or use --lql).")
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
    if args.lql:
        args.num_levels = 1
    if args.resume:  # continue in the checkpoint's run directory
        run_dir = os.path.dirname(os.path.abspath(args.resume))
    else:
        run_dir = os.path.join(args.run_dir, common.run_name_for(args.env_id, args.exp_name, args.seed))

    common.seed_everything(args.seed, args.torch_deterministic)
    device = common.pick_device(args.cuda)
    hot = hot_paths(args.compile, device)  # the eager functions, or compiled copies of them
    envs = common.make_vector_env(args.env_id, args.num_envs, args.seed,
                                  os.path.join(run_dir, "videos") if args.capture_video else None)  # fmt: skip
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    act_dim = int(np.prod(envs.single_action_space.shape))

    critic = NoiseConditionedTwinCritic(obs_dim, act_dim, args.hidden_dim, args.num_hidden).to(device)
    critic_target = NoiseConditionedTwinCritic(obs_dim, act_dim, args.hidden_dim, args.num_hidden).to(device)
    critic_target.load_state_dict(critic.state_dict())
    optimizer = torch.optim.Adam(critic.parameters(), lr=args.critic_lr)
    sigmas = torch.tensor(noise_schedule(args.num_levels, args.sigma_max, args.sigma_min), device=device)
    rb = ReplayBuffer(min(args.buffer_size, args.total_timesteps), obs_dim, act_dim, device)
    modules, optimizers = {"critic": critic, "critic_target": critic_target}, {"critic": optimizer}

    # counters (all of them are saved in checkpoints)
    step = dict(global_step=0, updates=0, next_log=args.log_frequency, next_eval=args.eval_frequency, last_eval=-1,
                next_checkpoint=args.checkpoint_frequency)  # fmt: skip
    if args.resume:
        step.update(common.load_checkpoint(args.resume, ALGORITHM, args.env_id, modules, optimizers, envs, rb))
        print(f"resumed from {args.resume} at step {step['global_step']} with {rb.size} transitions in the buffer")
    logger = common.Logger(run_dir, args, args.track, args.wandb_project_name, args.wandb_entity,
                           resume_step=step["global_step"] if args.resume else None)  # fmt: skip
    print(f"run directory: {run_dir}", flush=True)
    checkpoint_path = os.path.join(run_dir, "checkpoint.pt")

    def write_checkpoint(path: str) -> None:
        common.save_checkpoint(path, ALGORITHM, args, modules, optimizers, step, envs,
                               rb if args.checkpoint_buffer else None)  # fmt: skip

    @torch.no_grad()
    def policy(o: torch.Tensor) -> torch.Tensor:
        return hot.sample_actions(critic, o, args, act_dim)

    stop = common.StopSignal()
    obs, _ = envs.reset(seed=args.seed + step["global_step"])  # in-flight episodes restart after a resume
    progress = common.Progress(args.total_timesteps, args.learning_starts, start_step=step["global_step"])
    last_return, update_info = None, {}
    try:
        while step["global_step"] < args.total_timesteps:
            global_step = step["global_step"]
            # ---- act: uniform warm-up, then one annealed Langevin chain per state ----
            if global_step < args.learning_starts:
                actions = envs.action_space.sample()
            else:
                actions = policy(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
                common.check_finite("actions", actions)
            next_obs, rewards, terminated, truncated, infos = envs.step(actions)
            global_step = step["global_step"] = global_step + args.num_envs
            for episode_return, episode_length in common.finished_episodes(infos):
                last_return = episode_return
                logger.scalars({"charts/episodic_return": episode_return, "charts/episodic_length": episode_length},
                               global_step)  # fmt: skip
            real_next_obs = common.real_next_obs(next_obs, infos)
            common.check_finite("rewards", rewards)  # a NaN from the env never enters the buffer
            common.check_finite("observations", real_next_obs)
            rb.add(obs, real_next_obs, actions, rewards, terminated)
            obs = next_obs

            # ---- learn: one two-step critic update per vector step ----
            if global_step >= args.learning_starts:
                update_info = critic_update(args, rb.sample(args.batch_size), critic, critic_target, optimizer,
                                            sigmas, act_dim, hot)  # fmt: skip
                common.polyak_update(critic_target, critic, args.tau)
                step["updates"] += 1

            # ---- log ----
            if global_step >= step["next_log"]:
                step["next_log"] += args.log_frequency
                sps = progress.rate() or 0.0  # steps/s over the last 30 s of this phase (warm-up or training)
                logger.scalars({**update_info, "charts/SPS": sps, "charts/updates": step["updates"]}, global_step)
            progress.update(global_step, step["updates"], last_return)

            # ---- evaluate with the same stochastic sampler ----
            finished = global_step >= args.total_timesteps
            if global_step >= step["next_eval"] or (finished and step["last_eval"] < global_step):
                step["next_eval"], step["last_eval"] = step["next_eval"] + args.eval_frequency, global_step
                returns, _ = common.evaluate(policy, args.env_id, args.eval_episodes,
                                             args.seed + 1_000_000 + global_step, device)  # fmt: skip
                logger.scalars({"eval/episodic_return": returns.mean(), "eval/episodic_return_std": returns.std()},
                               global_step)  # fmt: skip
                progress.write(f"eval at {global_step}: {returns.mean():.1f} +- {returns.std():.1f}")

            # ---- checkpoint: periodically, and on SIGINT / SIGTERM ----
            if global_step >= step["next_checkpoint"]:
                step["next_checkpoint"] += args.checkpoint_frequency
                write_checkpoint(checkpoint_path)
            if stop.name is not None:
                write_checkpoint(checkpoint_path)
                progress.write(f"{stop.name} received: stopped at step {global_step}, checkpoint written to "
                               f"{checkpoint_path} (continue with --resume {checkpoint_path})")  # fmt: skip
                break
    except common.NonFiniteError as err:
        progress.close()
        last_good = os.path.join(run_dir, "last_good_checkpoint.pt")
        write_checkpoint(last_good)
        value, at = logger.last_values.get(err.name, (None, None))
        last = f"its last logged finite value was {value:.6g} at step {at}" if value is not None else "never logged"
        envs.close()
        logger.close()
        raise SystemExit(f"error: {err.name} became NaN or inf at step {step['global_step']} ({last}); the last "
                         f"good state is saved in {last_good}.") from None  # fmt: skip

    progress.close()
    if args.save_model:
        path = os.path.join(run_dir, f"{args.exp_name}.pt")
        common.save_atomic({"algorithm": ALGORITHM, "args": asdict(args), "obs_dim": obs_dim, "act_dim": act_dim,
                            "critic": critic.state_dict()}, path)  # fmt: skip
        print(f"model saved to {path}", flush=True)
    if args.compile:
        print(f"torch.compile built {common.compiled_graph_count()} graphs in this run", flush=True)
    envs.close()
    logger.close()


if __name__ == "__main__":
    main()
