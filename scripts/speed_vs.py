"""Compiled speed of this checkout against another one, timed in ONE process with the calls interleaved, so that the
machine's drift (on a shared 2-core machine the same code varies by up to 1.4x between minutes) falls on both alike.

python scripts/speed_vs.py OTHER_CHECKOUT [--what som_update som_action nc_lql_update nc_lql_action] [--rounds 16]
                           [--eager]

OTHER_CHECKOUT is a git worktree of another commit (git worktree add /tmp/other <commit>). Each side builds its own
networks from the same seed and runs its own compiled hot paths on the same batch: SOM's full update (critic and actor
steps, Polyak) at each side's defaults (the replay fit since commit 88a0f0c), SOM's one-step action for 5
observations, NC-LQL's full update, NC-LQL's one-observation action. Prints the median ms of each side and their
ratio (this / other). Both checkouts need `hot_paths`, `critic_update` (and SOM's `actor_update`, `build_networks`),
as every commit since the restructure of the scripts has.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, S, A = 256, 17, 6  # the protocol's batch, HalfCheetah-v4's dimensions


def load(root: str, script: str, name: str):
    """`root`/`script`.py as module `name`, with that checkout's own common.py."""
    sys.modules.pop("common", None)
    sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, f"{script}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    sys.path.pop(0)
    return module, sys.modules["common"]


def som_parts(root: str, tag: str, batch, compile: bool = True):
    som, common = load(root, "som", f"som_{tag}")
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    args = som.Args()
    args.num_target_candidates = args.num_candidates
    actor, critic = som.build_networks(args, S, A, cpu)
    critic_target = som.build_networks(args, S, A, cpu)[1]
    critic_target.load_state_dict(critic.state_dict())
    actor_opt, critic_opt = torch.optim.Adam(actor.parameters(), 1e-4), torch.optim.Adam(critic.parameters(), 1e-4)
    hot = som.hot_paths(compile, cpu)

    def step():
        som.critic_update(args, batch, actor, critic, critic_target, critic_opt, hot)
        som.actor_update(args, batch, actor, critic, actor_opt, hot)
        common.polyak_update(critic_target, critic, args.tau)

    @torch.no_grad()
    def action():  # collecting: one one-step action for each of the default --num-envs 5 observations
        hot.sample_actions(actor, critic, batch[0][:5], 1)

    return step, action


def nc_lql_parts(root: str, tag: str, batch, compile: bool = True):
    nc_lql, common = load(root, "nc_lql", f"nc_lql_{tag}")
    torch.manual_seed(0)
    args = nc_lql.Args()
    critic, critic_target = (nc_lql.NoiseConditionedTwinCritic(S, A, 256, 3) for _ in range(2))
    critic_target.load_state_dict(critic.state_dict())
    optimizer = torch.optim.Adam(critic.parameters(), 1e-4)
    sigmas = torch.tensor(nc_lql.noise_schedule(args.num_levels, args.sigma_max, args.sigma_min))
    hot = nc_lql.hot_paths(compile, torch.device("cpu"))

    def update():
        nc_lql.critic_update(args, batch, critic, critic_target, optimizer, sigmas, A, hot)
        common.polyak_update(critic_target, critic, args.tau)

    @torch.no_grad()
    def action():
        hot.sample_actions(critic, batch[0][:1], args, A)

    return update, action


def race(fns: dict, rounds: int, calls: int) -> dict:
    """Median ms per call of each function, the order alternating between rounds, after three warm-up calls."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times = {name: [] for name in fns}
    for i in range(rounds):
        for name, fn in list(fns.items())[:: 1 if i % 2 == 0 else -1]:
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - start) / calls * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("other", help="the other checkout (a git worktree)")
    what = ["som_update", "som_action", "nc_lql_update", "nc_lql_action"]
    p.add_argument("--what", nargs="+", default=what, choices=what)
    p.add_argument("--rounds", type=int, default=16)
    p.add_argument("--eager", action="store_true", help="time the eager functions instead of the compiled ones")
    cli = p.parse_args()
    if not os.path.isfile(os.path.join(cli.other, "som.py")):
        raise SystemExit(f"error: {cli.other!r} is not a checkout of this project (no som.py in it).")
    if cli.rounds < 1:
        raise SystemExit(f"error: --rounds must be positive, got {cli.rounds}.")
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(B, S, generator=g), torch.rand(B, A, generator=g) * 2 - 1, torch.randn(B, generator=g),
             torch.randn(B, S, generator=g), torch.zeros(B))  # fmt: skip
    roots = {"this": HERE, "other": os.path.abspath(cli.other)}
    mode = "eager" if cli.eager else "compiled"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {mode}; this = {HERE}, other = {roots['other']}"
    )
    print("| what | this (ms) | other (ms) | this / other |\n|---|---:|---:|---:|")
    rows = []
    if {"som_update", "som_action"} & set(cli.what):
        parts = {tag: som_parts(root, tag, batch, not cli.eager) for tag, root in roots.items()}
        if "som_update" in cli.what:
            rows.append(("SOM full update", race({t: p[0] for t, p in parts.items()}, cli.rounds, 3)))
        if "som_action" in cli.what:
            rows.append(("SOM one-step action, 5 observations", race({t: p[1] for t, p in parts.items()}, 40, 20)))
    if {"nc_lql_update", "nc_lql_action"} & set(cli.what):
        parts = {tag: nc_lql_parts(root, tag, batch, not cli.eager) for tag, root in roots.items()}
        if "nc_lql_update" in cli.what:
            rows.append(("NC-LQL full update", race({t: p[0] for t, p in parts.items()}, 2 * cli.rounds, 5)))
        if "nc_lql_action" in cli.what:
            rows.append(("NC-LQL action, one observation", race({t: p[1] for t, p in parts.items()}, 40, 20)))
    for name, ms in rows:
        print(f"| {name} | {ms['this']:.2f} | {ms['other']:.2f} | {ms['this'] / ms['other']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
