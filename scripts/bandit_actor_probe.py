"""Train SOM's one-step actor against the EXACT bandit reward used as a fixed critic, and report its N = 1 samples.

This isolates the actor (no critic learning, no best-of-N): a sweep over SOM's flags shows which target velocity
lets a MeanFlow network, sampled once, put its actions on MultimodalBandit-v0's high-value modes. The replay
actions are uniform in the box (what a warm-up buffer holds).

    python scripts/bandit_actor_probe.py                                  # the default flags
    python scripts/bandit_actor_probe.py --sweep alpha=0.03,0.1,0.3,1     # one flag, several values
    python scripts/bandit_actor_probe.py --set score_estimator=idem score_norm=True w=3 q_norm=batch alpha=1

Columns: mean reward of 2,000 one-step samples (uniform random actions: 0.056, best mode: 1.0), the share within
0.3 of the best and of the second mode, the share on the box edge, the same reward for 50 MeanFlow steps, and for
the target itself: the PF-ODE integrated with 200 Euler steps from the same score estimate.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import som  # noqa: E402
from scripts import bandit  # noqa: E402

MODES = torch.tensor(bandit.MultimodalBandit.MODES, dtype=torch.float32)


def bandit_reward(actions: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(bandit.MultimodalBandit.reward(actions.detach().numpy()), dtype=torch.float32)


class ExactBanditCritic(torch.nn.Module):
    """Both 'critics' are the true reward (the bandit is one step, so Q = r)."""

    def forward(self, obs, actions):
        sq = ((actions.unsqueeze(-2) - MODES) ** 2).sum(-1)
        heights = torch.tensor(bandit.MultimodalBandit.HEIGHTS, dtype=torch.float32)
        q = (heights * torch.exp(-sq / (2 * bandit.MultimodalBandit.WIDTH**2))).sum(-1)
        return torch.stack([q, q])


def train_actor(args: som.Args, updates: int, seed: int = 0, compile: bool = False) -> som.MeanFlowActor:
    """`updates` actor updates on uniform replay actions; compile: the hot functions compiled as with --compile (about
    40 s of compiling, then 3-4x faster per update)."""
    torch.manual_seed(seed)
    actor, _ = som.build_networks(args, 1, 2, "cpu")
    optimizer = torch.optim.Adam(actor.parameters(), lr=args.actor_lr)
    critic, obs = ExactBanditCritic(), torch.zeros(args.batch_size, 1)
    hot = som.hot_paths(compile)  # as som.py --compile builds them
    for _ in range(updates):
        actions = torch.rand(args.batch_size, 2) * 2 - 1
        som.actor_update(args, (obs, actions), actor, critic, optimizer, hot)
    return actor


@torch.no_grad()
def exact_flow_reward(args: som.Args, num: int = 2000, steps: int = 200) -> float:
    """The target the actor is fitted to, integrated directly: Euler steps of the PF-ODE da/dt = v(a, t) from
    N(0, I) at t = 1 to t = 0 (t_min), with the same score estimate and the exact reward as critic."""
    critic, obs = ExactBanditCritic(), torch.zeros(num, 1)
    a, times = torch.randn(num, 2), torch.linspace(1.0, args.t_min, steps + 1)
    for t, r in zip(times[:-1], times[1:]):
        tt = t.expand(num, 1)
        score, _ = som.score_estimate(lambda o, x: critic(o, x).mean(0), obs, a, tt, args.num_mc_samples, args.alpha,
                                      args.beta_min, args.beta_max, args.score_estimator, args.q_norm)  # fmt: skip
        a = a - (t - r) * som.target_velocity(a, score, tt, args.w, args.beta_min, args.beta_max, args.score_norm)
    return bandit_reward(a.clamp(-1, 1)).mean().item()


@torch.no_grad()
def report(actor: som.MeanFlowActor, num: int = 2000) -> dict:
    obs = torch.zeros(num, 1)
    one_step, x = som.flow_sample(actor, obs, 1)[0], som.flow_sample(actor, obs, 1, num_steps=50)[0]
    near = lambda a, m: (((a - m) ** 2).sum(-1) < 0.09).float().mean().item()  # noqa: E731
    return {"reward_n1": bandit_reward(one_step).mean().item(), "near_best": near(one_step, MODES[0]),
            "near_second": near(one_step, MODES[1]), "on_edge": (one_step.abs() > 0.999).float().mean().item(),
            "reward_50_steps": bandit_reward(x).mean().item()}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--updates", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="*", default=[], help="som.Args overrides, name=value")
    p.add_argument("--sweep", default=None, help="name=v1,v2,...: one run per value")
    p.add_argument("--compile", action="store_true", help="compile the actor's loss (same math, faster)")
    cli = p.parse_args()
    base = {"batch_size": 128, "num_mc_samples": 32, "actor_lr": 1e-3}
    for item in cli.set:
        name, value = item.split("=", 1)
        base[name] = value if value.isidentifier() and value not in ("True", "False") else ast.literal_eval(value)
    runs = [dict(base)]
    if cli.sweep:
        name, values = cli.sweep.split("=", 1)
        parse = lambda v: v if v.isidentifier() and v not in ("True", "False") else ast.literal_eval(v)  # noqa: E731
        runs = [dict(base, **{name: parse(v)}) for v in values.split(",")]
    print(f"{cli.updates} actor updates, seed {cli.seed}, torch threads {torch.get_num_threads()}")
    print("| flags | reward N=1 | near best | near second | on edge | reward 50 steps | exact PF-ODE | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for overrides in runs:
        start = time.time()
        res = report(train_actor(som.Args(**overrides), cli.updates, cli.seed, cli.compile))
        exact = exact_flow_reward(som.Args(**overrides))
        flags = " ".join(f"{k}={v}" for k, v in overrides.items())
        print(f"| {flags} | {res['reward_n1']:.3f} | {res['near_best']:.2f} | {res['near_second']:.2f} | "
              f"{res['on_edge']:.2f} | {res['reward_50_steps']:.3f} | {exact:.3f} | {time.time() - start:.0f} |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
