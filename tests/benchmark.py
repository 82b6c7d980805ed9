"""Speed of SOM and NC-LQL on this machine: ms per action, ms per update split by part, GFLOP/s, and the same for
a SAC-sized Gaussian actor (two hidden layers of 256) with its twin critic as a point of reference.

Usage: python tests/benchmark.py [--obs-dim 17 --act-dim 6 --batch-size 256 --num-mc-samples 100 --repeats 10]
Prints a markdown table. Defaults are HalfCheetah-v4's dimensions and the paper protocol's batch, K and N.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
import nc_lql  # noqa: E402
import som  # noqa: E402


def timed(fn, repeats: int) -> float:
    """Median milliseconds of fn() over `repeats` calls after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return 1000.0 * times[len(times) // 2]


def mlp_flops(rows: int, sizes: list[int]) -> float:
    """Forward FLOPs of an MLP (2 per multiply-add) on `rows` inputs."""
    return 2.0 * rows * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--obs-dim", type=int, default=17)
    p.add_argument("--act-dim", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-mc-samples", type=int, default=100)
    p.add_argument("--num-candidates", type=int, default=32)
    p.add_argument("--activation", default="mish")
    p.add_argument("--repeats", type=int, default=10)
    cli = p.parse_args()
    torch.manual_seed(0)
    S, A, B, K = cli.obs_dim, cli.act_dim, cli.batch_size, cli.num_mc_samples
    args = som.Args(batch_size=B, num_mc_samples=K, num_candidates=cli.num_candidates, activation=cli.activation)
    args.num_target_candidates = args.num_candidates
    actor, critic = som.build_networks(args, S, A, "cpu")
    critic_target = som.build_networks(args, S, A, "cpu")[1]
    actor_opt = torch.optim.Adam(actor.parameters(), lr=1e-4)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=1e-4)
    batch = (torch.randn(B, S), torch.rand(B, A) * 2 - 1, torch.randn(B), torch.randn(B, S), torch.zeros(B))
    rows = []

    one_obs = torch.randn(1, S)
    for n in (1, args.num_candidates):
        with torch.no_grad():
            ms = timed(lambda n=n: som.sample_actions(actor, critic, one_obs, n), cli.repeats * 5)
        rows.append((f"SOM action, one observation, N = {n}", ms, ""))

    ms_critic = timed(lambda: som.critic_update(args, batch, actor, critic, critic_target, critic_opt), cli.repeats)
    rows.append((f"SOM critic update (TD target with best-of-{args.num_candidates})", ms_critic, ""))

    t = torch.rand(B, 1) * 0.998 + 0.001
    noised = torch.randn(B, A)

    def mean_q(o, a):
        return critic(o, a).mean(0)

    def score():
        with torch.no_grad():
            som.score_estimate(mean_q, batch[0], noised, t, K, args.alpha, args.beta_min, args.beta_max,
                               args.score_estimator, args.q_norm)  # fmt: skip

    ms_score = timed(score, cli.repeats)
    h, L = args.hidden_dim, args.num_hidden
    score_flops = 2 * mlp_flops(K * B, [A] + [h] * L + [1]) + 2 * mlp_flops(B, [S, h])  # 2 critics; obs once
    rows.append((f"SOM score estimate (K = {K}, {K * B} rows x 2 critics)", ms_score,
                 f"{score_flops / ms_score / 1e6:.1f} GFLOP/s"))  # fmt: skip
    ms_actor = timed(lambda: som.actor_update(args, batch, actor, critic, actor_opt), cli.repeats)
    rows.append(("SOM actor update (score estimate + MeanFlow loss + step)", ms_actor, ""))
    rows.append(
        ("SOM full update (critic + actor)", ms_critic + ms_actor, f"{1000 / (ms_critic + ms_actor):.1f} updates/s")
    )

    # ---- NC-LQL ----
    nc_args = nc_lql.Args(batch_size=B)
    nc_critic = nc_lql.NoiseConditionedTwinCritic(S, A)
    nc_target = nc_lql.NoiseConditionedTwinCritic(S, A)
    nc_opt = torch.optim.Adam(nc_critic.parameters(), lr=1e-4)
    sigmas = torch.tensor(nc_lql.noise_schedule(10, 0.1, 0.001))
    ms_nc_act = timed(lambda: nc_lql.sample_actions(nc_critic, one_obs, nc_args, A), cli.repeats * 2)
    rows.append(("NC-LQL action, one observation (20 Langevin steps)", ms_nc_act, ""))
    ms_sampler = timed(lambda: nc_lql.sample_actions(nc_critic, batch[3], nc_args, A), cli.repeats)
    rows.append((f"NC-LQL sampler on {B} next states (TD target)", ms_sampler, ""))
    ms_nc = timed(lambda: nc_lql.critic_update(nc_args, batch, nc_critic, nc_target, nc_opt, sigmas, A), cli.repeats)
    clean, lvl = torch.tensor(9), torch.randint(0, 9, (B,))
    with torch.no_grad():
        y, q_bar = batch[2], nc_critic(batch[0], batch[1], clean).mean(0)
        noised = batch[1] + sigmas[lvl].unsqueeze(-1) * torch.randn_like(batch[1])

    def nc_step(loss_fn):
        nc_opt.zero_grad()
        loss_fn().backward()
        nc_opt.step()

    ms_td = timed(lambda: nc_step(lambda: nc_lql.td_loss(nc_critic, batch[0], batch[1], clean, y)), cli.repeats)
    ms_dn = timed(lambda: nc_step(lambda: nc_lql.denoising_loss(nc_critic, batch[0], noised, lvl, q_bar)), cli.repeats)
    rows.append(("NC-LQL TD step (clean level, both critics, Adam)", ms_td, ""))
    rows.append(("NC-LQL denoising step (levels 0..L-2, both critics, Adam)", ms_dn, ""))
    rows.append(("NC-LQL full update (sampler + targets + both steps)", ms_nc, f"{1000 / ms_nc:.1f} updates/s"))

    # ---- reference: SAC-sized tanh-Gaussian actor (2 x 256, ReLU) and twin critic ----
    sac_actor = common.EnsembleMLP(1, [S], 256, 2, 2 * A, torch.nn.ReLU)
    sac_critic = common.EnsembleMLP(2, [S, A], 256, 2, 1, torch.nn.ReLU)
    sac_opts = [torch.optim.Adam(m.parameters(), lr=3e-4) for m in (sac_actor, sac_critic)]

    def sac_act(o):
        mean, log_std = sac_actor(o)[0].chunk(2, -1)
        return torch.tanh(mean + log_std.clamp(-5, 2).exp() * torch.randn_like(mean))

    def sac_update():
        o, a, r, o2, d = batch
        with torch.no_grad():
            y = r + 0.99 * (1 - d) * sac_critic(o2, sac_act(o2)).min(0).values.squeeze(-1)
        loss = (sac_critic(o, a).squeeze(-1) - y).pow(2).mean(1).sum()
        sac_opts[1].zero_grad()
        loss.backward()
        sac_opts[1].step()
        actor_loss = -sac_critic(o, sac_act(o)).min(0).values.mean()  # (entropy term omitted: same cost class)
        sac_opts[0].zero_grad()
        actor_loss.backward()
        sac_opts[0].step()

    with torch.no_grad():
        rows.append(("reference: SAC-sized Gaussian actor, one observation", timed(lambda: sac_act(one_obs),
                                                                                     cli.repeats * 5), ""))  # fmt: skip
    ms_sac = timed(sac_update, cli.repeats)
    rows.append(("reference: SAC-sized update (critic + actor)", ms_sac, f"{1000 / ms_sac:.1f} updates/s"))

    x, wmat = torch.randn(K * B, h), torch.randn(2, h, h)
    ms_mm = timed(lambda: torch.matmul(x.view(1, -1, h), wmat), cli.repeats)
    rows.append((f"reference: plain matmul (2 x {K * B} x {h} x {h})", ms_mm,
                 f"{2 * 2 * K * B * h * h / ms_mm / 1e6:.1f} GFLOP/s"))  # fmt: skip

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, obs {S}, act {A}, batch {B}, "
          f"activation {cli.activation}")  # fmt: skip
    print("| what | ms | rate |\n|---|---:|---|")
    for name, ms, rate in rows:
        print(f"| {name} | {ms:.2f} | {rate} |")


if __name__ == "__main__":
    main()
