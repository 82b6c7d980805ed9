"""Figures for the README, regenerated from the runs' TensorBoard files and saved models.

    python scripts/figures.py curves RUN_DIR [RUN_DIR ...] --out docs/curves.png
        one panel per env: eval return (mean, and min-max over seeds as a band) against env steps, one colour per
        exp_name; SOM runs also get their N = 1 curve (eval/episodic_return_n1) dashed and their zero-noise curve
        dotted (without bands)
    python scripts/figures.py bandit --som runs/.../som.pt --nc-lql runs/.../nc_lql.pt --out docs/bandit.png
        MultimodalBandit-v0's reward landscape with 500 actions from SOM (N = 1 and N = 32) and NC-LQL
    python scripts/figures.py release RUN_DIR [RUN_DIR ...] --out docs/release.png
        Hopper-v4 eval returns against post-warm-up steps (steps - 30,000), beside the authors' NC-LQL release run
        on this machine type (its 40 evaluation means, RELEASE_HOPPER below); longer runs are cut at the
        release's 60,000 post-warm-up steps (`curves` draws them whole)

    python scripts/figures.py summary RUN_DIR [RUN_DIR ...] [--episodes 300]
        no figure: per run, the commit it ran on, its flags that differ from the script's defaults, its eval returns
        (SOM: best-of-N, N = 1 and zero noise) as table rows, and the mean return of the first and the last 300
        training episodes (on the bandit an episode is one action)
    python scripts/figures.py compare RUN_DIR [RUN_DIR ...] [--baseline sac_sb3] [--up-to 30000] [--per-seed]
        no figure: a markdown table, one row per (exp_name, eval tag), one column per env (--per-seed: per env and
        seed): the mean over seeds of each run's mean eval return over the last third of its evaluations up to
        --up-to steps, and that mean over the baseline's (its eval/episodic_return, where positive); the last column
        averages each run's ratio to the baseline's mean on its env over envs and seeds

RUN_DIR is a folder of run directories (runs/ by default, named {env}__{exp_name}__{seed}__{time}) or one run.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys
from collections import defaultdict

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from scripts import bandit  # noqa: E402

# the eval tags the scripts write, with the label suffix each gets (SOM: best-of-N, N = 1, zero noise)
EVAL_TAGS = {
    "eval/episodic_return": "",
    "eval/episodic_return_n1": "N = 1",
    "eval/episodic_return_zero_noise": "zero noise",
}


def read_tag(run_dir: str, tag: str) -> tuple[np.ndarray, np.ndarray]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags()["scalars"]:
        return np.array([]), np.array([])
    events = acc.Scalars(tag)
    return np.array([e.step for e in events]), np.array([e.value for e in events])


def find_runs(paths: list[str]) -> dict:
    """{(env_id, exp_name): [run_dir, ...]} from run directory names."""
    groups = defaultdict(list)
    for path in paths:
        candidates = [path] if glob.glob(os.path.join(path, "events.*")) else sorted(glob.glob(os.path.join(path, "*")))
        for run in candidates:
            parts = os.path.basename(run.rstrip("/")).split("__")
            if len(parts) == 4 and glob.glob(os.path.join(run, "events.*")):
                groups[(parts[0], parts[1])].append(run)
    return groups


def plot_curves(paths: list[str], out: str) -> None:
    groups = find_runs(paths)
    envs = sorted({env for env, _ in groups})
    exps = sorted({exp for _, exp in groups})
    colors = {exp: f"C{i}" for i, exp in enumerate(exps)}  # one colour per algorithm, the same in every panel
    fig, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 3.6), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for (env_id, exp), runs in sorted(groups.items()):
            if env_id != env:
                continue
            for tag, style in zip(EVAL_TAGS, ("-", "--", ":")):
                curves = [read_tag(r, tag) for r in runs]
                curves = [c for c in curves if len(c[0])]
                if not curves:
                    continue
                n = min(len(c[0]) for c in curves)
                steps, values = curves[0][0][:n], np.stack([c[1][:n] for c in curves])
                label = f"{exp} ({len(curves)} seed{'s' if len(curves) > 1 else ''})"
                label += f", {EVAL_TAGS[tag]}" if EVAL_TAGS[tag] else ""
                line = ax.plot(steps, values.mean(0), style, label=label, color=colors[exp])[0]
                if len(curves) > 1 and style == "-":  # the band: min-max over seeds, of the solid curve only
                    ax.fill_between(steps, values.min(0), values.max(0), alpha=0.2, color=line.get_color())
        label_axes(ax, env, "environment steps", "eval return")
    save(fig, out)


def label_axes(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x else "0"))


def save(fig, out: str) -> None:
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


# The authors' NC-LQL release, Hopper-v4, its defaults, seed 100: evaluation means (20 episodes) every 1,500
# post-warm-up env steps, the release's code run on this project's machine type.
RELEASE_HOPPER = [38.9, 43.3, 43.0, 71.9, 149.7, 96.0, 186.2, 180.9, 203.8, 271.0, 219.4, 310.2, 341.2, 283.8, 349.7,
                  401.9, 362.6, 309.3, 387.5, 305.7, 292.6, 289.0, 317.4, 328.1, 380.6, 285.4, 304.9, 324.2, 294.0,
                  323.4, 313.5, 320.7, 323.2, 310.8, 368.5, 316.5, 372.1, 393.0, 398.6, 324.3]  # fmt: skip


def plot_release(paths: list[str], out: str, warmup: int = 30_000) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4))
    release_steps = 1500 * np.arange(1, len(RELEASE_HOPPER) + 1)
    ax.plot(release_steps, RELEASE_HOPPER, "k-", lw=1, label="authors' NC-LQL release (JAX), seed 100")
    for (_env, exp), runs in sorted(find_runs(paths).items()):
        for run in runs:
            seed = os.path.basename(run).split("__")[2]
            for tag, style in (("eval/episodic_return", "o-"), ("eval/episodic_return_n1", "s--")):
                steps, values = read_tag(run, tag)
                keep = (steps > warmup) & (steps - warmup <= release_steps[-1])  # the release's 60,000 steps
                if keep.any():
                    label = f"{exp}, seed {seed}" + (", N = 1" if tag.endswith("n1") else "")
                    ax.plot(steps[keep] - warmup, values[keep], style, ms=4, label=label)
    label_axes(ax, "Hopper-v4, the protocol's defaults", "post-warm-up environment steps (transitions - 30,000)",
               "eval return (20 episodes)")  # fmt: skip
    save(fig, out)


def plot_bandit(som_path: str, nc_path: str | None, out: str, num: int = 500) -> None:
    import nc_lql
    import som

    torch.manual_seed(0)
    grid = np.linspace(-1, 1, 201)
    xx, yy = np.meshgrid(grid, grid)
    reward = bandit.MultimodalBandit.reward(np.stack([xx, yy], -1))
    panels = []
    obs = torch.zeros(num, 1)
    for n in (1, 32):
        policy, _ = som.load_policy(som_path, num_candidates=n)
        panels.append((f"SOM, one step, N = {n}", policy(obs).numpy()))
    if nc_path:
        policy, _ = nc_lql.load_policy(nc_path)
        panels.append(("NC-LQL (annealed Langevin)", policy(obs).numpy()))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    for ax, (title, actions) in zip(axes[0], panels):
        ax.contourf(xx, yy, reward, levels=20, cmap="viridis")
        ax.scatter(actions[:, 0], actions[:, 1], s=4, c="white", alpha=0.6)
        mean_r = bandit.MultimodalBandit.reward(actions).mean()
        ax.set_title(f"{title}\nmean reward {mean_r:.2f} (random 0.06, best 1.0)", fontsize=9)
        ax.set_xlim(-1.05, 1.05)
        ax.set_ylim(-1.05, 1.05)
        ax.set_aspect("equal")
    save(fig, out)


def run_flags(run_dir: str) -> dict:
    """The arguments a run logged (its "hyperparameters" text: every flag, and the commit it ran on)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"tensors": 0})
    acc.Reload()
    if "hyperparameters/text_summary" not in acc.Tags()["tensors"]:
        return {}
    text = acc.Tensors("hyperparameters/text_summary")[0].tensor_proto.string_val[0].decode()
    rows = [line.strip("|").split("|", 1) for line in text.splitlines()[2:]]
    return {k: v for k, v in (row for row in rows if len(row) == 2)}


def changed_flags(flags: dict) -> str:
    """The flags that differ from the defaults of the script that wrote them, as a command line."""
    import nc_lql
    import som

    module = som if "actor_lr" in flags else nc_lql if "num_levels" in flags else None
    defaults = {k: str(v) for k, v in vars(module.Args()).items()} if module else {}
    plumbing = {"exp_name", "run_dir", "track", "wandb_project_name", "wandb_entity", "resume", "commit"}
    changed = [(k.replace("_", "-"), v) for k, v in flags.items() if k not in plumbing and defaults.get(k) != v]
    return " ".join(f"--{k}" if v == "True" else f"--no-{k}" if v == "False" else f"--{k} {v}" for k, v in changed)


def print_summary(paths: list[str], episodes: int) -> None:
    for (env, exp), runs in sorted(find_runs(paths).items()):
        for run in runs:
            flags = run_flags(run)
            print(f"{env} {exp} ({os.path.basename(run)}), commit {flags.get('commit', 'not logged')}")
            print(f"  flags: {changed_flags(flags)}")
            for tag in EVAL_TAGS:
                steps, values = read_tag(run, tag)
                if len(steps):
                    print(f"  {tag} at {', '.join(f'{s:,}' for s in steps)}")
                    print(f"  | {' | '.join(f'{v:.1f}' for v in values)} |")
            _, train = read_tag(run, "charts/episodic_return")
            if len(train) >= episodes:
                print(
                    f"  training episodes: {len(train)}; first {episodes}: {train[:episodes].mean():.3f}, "
                    f"last {episodes}: {train[-episodes:].mean():.3f}"
                )


def last_third_mean(steps: np.ndarray, values: np.ndarray, up_to: int) -> float:
    """The mean of the last third (rounded up) of the evaluations at steps <= up_to; NaN when the run stopped short
    of up_to (its last third would cover other steps than the others')."""
    kept = values[steps <= up_to]
    if not len(kept) or steps.max() < up_to:
        return float("nan")
    return float(kept[-math.ceil(len(kept) / 3) :].mean())


def compare_table(paths: list[str], baseline: str, up_to: int, per_seed: bool = False) -> list[str]:
    """The `compare` table's lines. Per (exp_name, tag) and env: the seeds' mean and its ratio to the baseline's
    mean on that env; `per_seed`: one column per (env, seed) with that run's mean. The last column is the mean over
    envs and seeds of each run's ratio to the baseline's mean on its env."""
    groups = find_runs(paths)
    envs = sorted({env for env, _ in groups})
    scores = {}  # (exp, tag) -> {env: {seed: last-third mean}}
    for (env, exp), runs in groups.items():
        for run in runs:
            seed = int(os.path.basename(run.rstrip("/")).split("__")[2])
            for tag in EVAL_TAGS:
                steps, values = read_tag(run, tag)
                if len(steps):
                    scores.setdefault((exp, tag), {}).setdefault(env, {})[seed] = last_third_mean(steps, values, up_to)
    base = {env: np.mean(list(v.values())) for env, v in scores.get((baseline, "eval/episodic_return"), {}).items()}
    base = {env: v for env, v in base.items() if v > 0}  # a ratio to a baseline at or below zero says nothing
    columns = sorted({(env, seed) for by_env in scores.values() for env, v in by_env.items() for seed in v})
    heads = [f"{env} seed {seed}" for env, seed in columns] if per_seed else envs
    lines = [
        f"| method ({up_to:,} steps) | {' | '.join(heads)} | mean ratio to {baseline} |",
        "|---" * (len(heads) + 2) + "|",
    ]
    for (exp, tag), by_env in sorted(scores.items()):
        ratios = [v / base[env] for env, seeds in by_env.items() if env in base for v in seeds.values()]
        if per_seed:
            cells = [f"{by_env[env][seed]:.1f}" if seed in by_env.get(env, {}) else "" for env, seed in columns]
        else:
            cells = []
            for env in envs:
                seeds = list(by_env.get(env, {}).values())
                cell = f"{np.mean(seeds):.1f} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})" if seeds else ""
                cells.append(cell + (f", {np.mean(seeds) / base[env]:.2f}x" if seeds and env in base else ""))
        name = f"{exp}, {EVAL_TAGS[tag]}" if EVAL_TAGS[tag] else exp
        lines.append(f"| {name} | {' | '.join(cells)} | {f'{np.mean(ratios):.2f}' if ratios else ''} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("curves")
    c.add_argument("paths", nargs="*", default=["runs"])
    c.add_argument("--out", default="docs/curves.png")
    b = sub.add_parser("bandit")
    b.add_argument("--som", required=True)
    b.add_argument("--nc-lql", default=None)
    b.add_argument("--out", default="docs/bandit.png")
    r = sub.add_parser("release")
    r.add_argument("paths", nargs="+")
    r.add_argument("--out", default="docs/release.png")
    t = sub.add_parser("summary")
    t.add_argument("paths", nargs="+")
    t.add_argument("--episodes", type=int, default=300)
    m = sub.add_parser("compare")
    m.add_argument("paths", nargs="+")
    m.add_argument("--baseline", default="sac_sb3")
    m.add_argument("--up-to", type=int, default=30_000)
    m.add_argument("--per-seed", action="store_true")
    args = p.parse_args()
    if args.what == "curves":
        plot_curves(args.paths, args.out)
    elif args.what == "compare":
        print("\n".join(compare_table(args.paths, args.baseline, args.up_to, args.per_seed)))
    elif args.what == "summary":
        print_summary(args.paths, args.episodes)
    elif args.what == "release":
        plot_release(args.paths, args.out)
    else:
        plot_bandit(args.som, args.nc_lql, args.out)


if __name__ == "__main__":
    main()
