"""Speed of SOM and NC-LQL on this machine, eager and `--compile` side by side.

Prints markdown tables: ms per action (one observation; NC-LQL also the training rollout's 5), ms per update split
by phase with each phase's achieved GFLOP/s (matmul FLOPs only) next to a plain matmul's rate in the same run, the
FLOP floor of each update at that rate, the compile time of each compiled function (its first call), and the
end-to-end training steps per second of a short Hopper-v4 run at the scripts' defaults in both modes.

Usage: python tests/benchmark.py [--obs-dim 17 --act-dim 6 --batch-size 256 --num-mc-samples 100 --repeats 10]
       [--no-end-to-end] [--only som|nc_lql] [--cuda] [--som-variant q_norm=uniform ...] [--out results/speed.json]
Defaults: HalfCheetah-v4's dimensions, the protocol's batch, K = 100 and N = 32. It takes about 15 minutes on 2 CPU
cores, most of it compiling and the end-to-end runs.
"""

from __future__ import annotations

import argparse
import ast
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402
import nc_lql  # noqa: E402
import som  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sync() -> None:
    if torch.cuda.is_available():  # CUDA kernels run asynchronously: time them to their end
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> float:
    """Median milliseconds of fn() over `repeats` calls after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    times.sort()
    return 1000.0 * times[len(times) // 2]


def first_call_seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def mlp_flops(rows: int, sizes: list[int]) -> float:
    """Forward matmul FLOPs of an MLP (2 per multiply-add) on `rows` inputs."""
    return 2.0 * rows * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


class Table:
    def __init__(self, matmul_gflops: float):
        self.rows, self.matmul, self.records = [], matmul_gflops, []

    def add(self, name: str, eager_ms: float, compiled_ms: float, gflop: float = 0.0) -> None:
        self.records.append({"what": name, "eager_ms": round(eager_ms, 3), "compiled_ms": round(compiled_ms, 3),
                             "gflop": round(gflop, 4)})  # fmt: skip
        rate = lambda ms: f"{gflop / ms * 1e3:.0f}" if gflop else ""  # noqa: E731
        floor = f"{gflop / self.matmul * 1e3:.1f}" if gflop else ""
        self.rows.append(f"| {name} | {eager_ms:.2f} | {compiled_ms:.2f} | {eager_ms / compiled_ms:.1f}x | "
                         f"{rate(eager_ms)} | {rate(compiled_ms)} | {floor} |")  # fmt: skip

    def print(self) -> None:
        print("| what | eager ms | compiled ms | speed-up | eager GFLOP/s | compiled GFLOP/s | FLOP floor ms |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        print("\n".join(self.rows))


def end_to_end(script: str, compiled: bool, training_steps: int, device: str = "cpu") -> float:
    """Training steps/s of `python script --env-id Hopper-v4` at the defaults (30,000 warm-up transitions, 5 envs),
    over the last 30 s of its training phase (charts/SPS at the last log; compiling happens before that window)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as runs:
        cmd = [sys.executable, os.path.join(ROOT, script), "--env-id", "Hopper-v4",
               "--cuda" if device == "cuda" else "--no-cuda", "--run-dir", runs,
               "--total-timesteps", str(30_000 + training_steps), "--log-frequency", "500",
               "--eval-episodes", "1", "--compile" if compiled else "--no-compile"]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, cwd=runs)
        (run_dir,) = glob.glob(os.path.join(runs, "*"))
        acc = EventAccumulator(run_dir)
        acc.Reload()
        return acc.Scalars("charts/SPS")[-1].value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--obs-dim", type=int, default=17)
    p.add_argument("--act-dim", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-mc-samples", type=int, default=100)
    p.add_argument("--num-candidates", type=int, default=32)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--end-to-end", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--only", choices=["som", "nc_lql"], default=None, help="time one script only")
    p.add_argument("--cuda", action="store_true", help="time on the GPU (eager, and compiled without CUDA graphs)")
    p.add_argument(
        "--som-variant",
        action="append",
        default=[],
        metavar="FLAG=VALUE[,FLAG=VALUE]",
        help="also time SOM's full update with these Args changed, e.g. q_norm=uniform (repeatable)",
    )
    p.add_argument("--out", default=None, help="write the table and the run's facts to this JSON file")
    cli = p.parse_args()
    if cli.cuda and not torch.cuda.is_available():
        raise SystemExit("error: --cuda needs a CUDA device, and torch sees none.")
    cpu = torch.device("cuda" if cli.cuda else "cpu")  # the device every tensor below lives on
    torch.manual_seed(0)
    S, A, B, K, N = cli.obs_dim, cli.act_dim, cli.batch_size, cli.num_mc_samples, cli.num_candidates
    h, reps = 256, cli.repeats
    compile_s = {}

    def both(name, fn, module, repeats: int) -> tuple[float, float]:
        """(eager ms, compiled ms) of fn(hot): with the module's eager hot functions, then with compiled ones."""
        eager_hot, compiled_hot = module.hot_paths(), module.hot_paths(compile=True, device=cpu)
        eager = timed(lambda: fn(eager_hot), repeats)
        compile_s[name] = first_call_seconds(lambda: fn(compiled_hot))
        return eager, timed(lambda: fn(compiled_hot), repeats)

    x, wmat = torch.randn(K * B, h, device=cpu), torch.randn(2, h, h, device=cpu)
    ms_mm = timed(lambda: torch.matmul(x.view(1, -1, h), wmat), reps)
    matmul_gflops = 2 * 2 * K * B * h * h / ms_mm / 1e6
    table = Table(matmul_gflops)
    actor_sizes = [A + 32, h, h, h, A]  # the state's share is computed once per state, not per candidate
    critic_sizes = [A, h, h, h, 1]

    batch = (torch.randn(B, S), torch.rand(B, A) * 2 - 1, torch.randn(B), torch.randn(B, S), torch.zeros(B))
    batch = tuple(x.to(cpu) for x in batch)

    # ---------------------------------------------------------------------------------------------------- SOM
    if cli.only != "nc_lql":
        args = som.Args(batch_size=B, num_mc_samples=K, num_candidates=N, num_target_candidates=N)
        actor, critic = som.build_networks(args, S, A, cpu)
        critic_target = som.build_networks(args, S, A, cpu)[1]
        actor_opt = torch.optim.Adam(actor.parameters(), lr=1e-4)
        critic_opt = torch.optim.Adam(critic.parameters(), lr=1e-4)
        one_obs = torch.randn(1, S, device=cpu)
        for n in (1, N):
            with torch.no_grad():
                e, c = both(f"som act N={n}", lambda hot, n=n: hot.sample_actions(actor, critic, one_obs, n), som,
                            reps * 10)  # fmt: skip
            table.add(f"SOM action, one observation, N = {n}", e, c)

        # next-action candidates: actor and both critics on N x B rows; the target critics on B rows; states once each
        flops_target = (
            mlp_flops(N * B, actor_sizes)
            + 2 * mlp_flops(N * B, critic_sizes)
            + 2 * mlp_flops(B, [S + A] + critic_sizes[1:])
        )
        flops_target += mlp_flops(B, [S, h]) * 3
        with torch.no_grad():
            e, c = both("som td target", lambda hot: hot.bootstrap_target(args, batch, actor, critic, critic_target),
                        som, reps)  # fmt: skip
        table.add(f"SOM TD target (best-of-{N} next action, target critics)", e, c, flops_target / 1e9)

        def critic_step(hot):
            loss, _ = hot.critic_loss(critic, batch[0], batch[1], batch[2])
            critic_opt.zero_grad()
            loss.backward()
            critic_opt.step()

        flops_critic_step = 3 * 2 * mlp_flops(B, [S + A] + critic_sizes[1:])
        e, c = both("som critic step", critic_step, som, reps)
        table.add("SOM critic step (TD loss, backward, Adam)", e, c, flops_critic_step / 1e9)

        t_rand, noised = torch.rand(B, 1, device=cpu) * 0.998 + 0.001, torch.randn(B, A, device=cpu)

        def score():  # returns the score: a compiled function whose result is unused would compute nothing
            with torch.no_grad():
                return som.score_estimate(lambda o, a: critic(o, a).mean(0), batch[0], noised, t_rand, K, args.alpha,
                                          args.beta_min, args.beta_max)[0]  # fmt: skip

        flops_score = 2 * mlp_flops(K * B, critic_sizes) + 2 * mlp_flops(B, [S, h])
        e = timed(score, reps)
        compiled_score = common.compile_hot(score, cpu)
        compile_s["som score estimate"] = first_call_seconds(compiled_score)
        c = timed(compiled_score, reps)
        table.add(f"SOM score estimate (K = {K}, {K * B} rows x 2 critics)", e, c, flops_score / 1e9)

        def actor_step(hot):
            loss, _ = hot.actor_loss(args, batch, actor, critic)
            actor_opt.zero_grad()
            loss.backward()
            actor_opt.step()

        # u with its backward (3 forward passes) and the JVP (about 2) on B rows, plus the score estimate
        flops_actor_step = flops_score + mlp_flops(5 * B, [S + A + 32] + actor_sizes[1:])
        e, c = both("som actor step", actor_step, som, reps)
        table.add(
            "SOM actor step (score estimate, MeanFlow loss with JVP, backward, Adam)",
            e,
            c,
            flops_actor_step / 1e9,
        )

        def som_update(hot):
            som.critic_update(args, batch, actor, critic, critic_target, critic_opt, hot)
            som.actor_update(args, batch, actor, critic, actor_opt, hot)

        flops_update = flops_target + flops_critic_step
        e, c = both("som update", som_update, som, reps)
        table.add("**SOM full update** (critic + actor)", e, c, (flops_update + flops_actor_step) / 1e9)
        for variant in cli.som_variant:  # the same update with other flags, timed in this run beside the default's
            changes = dict(item.split("=", 1) for item in variant.split(","))
            changes = {
                k: v if isinstance(getattr(som.Args(), k), str) else ast.literal_eval(v) for k, v in changes.items()
            }
            args = som.Args(batch_size=B, num_mc_samples=K, num_candidates=N, num_target_candidates=N, **changes)
            e, c = both(f"som update {variant}", som_update, som, reps)
            table.add(f"SOM full update, {variant.replace(',', ', ')}", e, c)

    # ---------------------------------------------------------------------------------------------------- NC-LQL
    if cli.only != "som":
        nc_args = nc_lql.Args(batch_size=B)
        nc_critic = nc_lql.NoiseConditionedTwinCritic(S, A).to(cpu)
        nc_target = nc_lql.NoiseConditionedTwinCritic(S, A).to(cpu)
        nc_opt = torch.optim.Adam(nc_critic.parameters(), lr=1e-4)
        sigmas = torch.tensor(nc_lql.noise_schedule(10, 0.1, 0.001), device=cpu)
        steps = nc_args.num_levels * nc_args.steps_per_level
        # one Langevin step per row: both critics' forward on the action's share and the hidden layers, and the same
        # matrices again for the input gradient
        step_flops = 2 * 2 * mlp_flops(1, critic_sizes)
        for rows in (1, 5):
            obs = torch.randn(rows, S, device=cpu)
            with torch.no_grad():
                e, c = both(f"nc act {rows}", lambda hot, obs=obs: hot.sample_actions(nc_critic, obs, nc_args, A),
                            nc_lql, reps * (5 if rows == 1 else 2))  # fmt: skip
            what = "one observation" if rows == 1 else f"{rows} observations (the training rollout)"
            table.add(f"NC-LQL action, {what}, {steps} Langevin steps", e, c, rows * steps * step_flops / 1e9)

        full_critic = [S + A + 16] + critic_sizes[1:]
        flops_targets = B * steps * step_flops + 2 * 2 * mlp_flops(B, full_critic)
        with torch.no_grad():
            e, c = both("nc targets", lambda hot: hot.update_targets(nc_args, batch, nc_critic, nc_target, sigmas, A),
                        nc_lql, reps)  # fmt: skip
        table.add(f"NC-LQL targets (sampler on {B} next states, target and online critics)", e, c, flops_targets / 1e9)
        with torch.no_grad():
            y, q_bar, lvl, noised_nc = nc_lql.update_targets(nc_args, batch, nc_critic, nc_target, sigmas, A)

        def nc_step(loss_fn):
            nc_opt.zero_grad()
            loss_fn().backward()
            nc_opt.step()

        flops_step = 3 * 2 * mlp_flops(B, full_critic)
        e, c = both("nc td step", lambda hot: nc_step(lambda: hot.regression_loss(nc_critic, batch[0], batch[1], 9, y)),
                    nc_lql, reps)  # fmt: skip
        table.add("NC-LQL TD step (clean level, backward, Adam)", e, c, flops_step / 1e9)
        dn_loss = lambda hot: hot.regression_loss(nc_critic, batch[0], noised_nc, lvl, q_bar)  # noqa: E731
        e, c = both("nc dn step", lambda hot: nc_step(lambda: dn_loss(hot)), nc_lql, reps)
        table.add("NC-LQL denoising step (levels 0..L-2, backward, Adam)", e, c, flops_step / 1e9)
        e, c = both("nc update", lambda hot: nc_lql.critic_update(nc_args, batch, nc_critic, nc_target, nc_opt,
                                                                  sigmas, A, hot), nc_lql, reps)  # fmt: skip
        table.add("**NC-LQL full update** (targets + both steps)", e, c, (flops_targets + 2 * flops_step) / 1e9)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, obs {S}, act {A}, batch {B}, K {K}, N {N}; "
          f"median of {reps} calls (actions: more) after 2 warm-up calls")  # fmt: skip
    print(f"plain matmul (2 x {K * B} x {h} x {h}): {ms_mm:.2f} ms = {matmul_gflops:.1f} GFLOP/s, the rate the FLOP "
          "floors use\n")  # fmt: skip
    table.print()
    print("\ncompile time of each compiled function (its first call, seconds):")
    print(", ".join(f"{k} {v:.0f}" for k, v in compile_s.items()))

    end_to_end_rows = []
    if cli.end_to_end:
        print("\nend-to-end, Hopper-v4 at the defaults (5 envs, 30,000 warm-up transitions), training steps/s over "
              "the last 30 s of a short run:")  # fmt: skip
        print("| script | eager | --compile | speed-up |\n|---|---:|---:|---:|")
        for script, (eager_steps, compiled_steps) in (("som.py", (1000, 2000)), ("nc_lql.py", (2000, 5000))):
            if cli.only and not script.startswith(cli.only):
                continue
            e = end_to_end(script, False, eager_steps, cpu.type)
            c = end_to_end(script, True, compiled_steps, cpu.type)
            print(f"| {script} | {e:.1f} | {c:.1f} | {c / e:.1f}x |", flush=True)
            end_to_end_rows.append(
                {"script": script, "eager_steps_per_s": round(e, 1), "compiled_steps_per_s": round(c, 1)}
            )
    if cli.out:  # the record README.md and docs/speed.md print their speed tables from (figures.py tables)
        record = {"format": "som-nc_lql-benchmark/1", "command": common.command_line(),
                  "commit": common.source_commit(),
                  "machine": common.machine_description(), "versions": common.package_versions(), "device": cpu.type,
                  "sizes": {"obs": S, "act": A, "batch": B, "K": K, "N": N}, "matmul_gflops": round(matmul_gflops, 1),
                  "rows": table.records, "compile_s": {k: round(v, 1) for k, v in compile_s.items()},
                  "end_to_end": end_to_end_rows}  # fmt: skip
        with open(cli.out, "w") as f:
            json.dump(record, f, indent=1)
        print(f"wrote {cli.out}")


if __name__ == "__main__":
    main()
