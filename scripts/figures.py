"""Every table and figure of the pages, computed from the run records in results/; `export` writes those records.

    python scripts/figures.py export RUN_DIR [RUN_DIR ...] --out results/SET/
        one record per run folder (results/SET/{exp_name}__{env}__{seed}.json, a few KB): every evaluation of every
        evaluated policy (SOM: best-of-N, N = 1, zero noise), the training episodes (at most 300 binned means), the
        wall time and steps per second of the warm-up and of training, the command, the commit, the versions of
        torch / gymnasium / mujoco and the machine. A run that stopped before its last evaluation is refused.
    python scripts/figures.py tables [--write]
        every table of README.md and docs/ from results/: per task, the mean +- standard deviation over seeds of each
        run's score (the mean of its last four evaluations); over tasks, the interquartile mean of SAC-normalised
        scores and the probability of beating SAC, with 95% stratified-bootstrap intervals (rliable); the runs'
        commits, machine and wall time. Printed; --write puts each between its markers in the pages (the docs test
        fails when a page differs from what the records give)
    python scripts/figures.py curves results/SET --out docs/SET.png
        one panel per task: eval return against env steps, the mean over seeds and their min-max as a band, one
        colour per script; SOM's N = 1 dashed and zero-noise dotted
    python scripts/figures.py aggregate results/SET --out docs/SET_aggregate.png
        the aggregate table's intervals as a figure
    python scripts/figures.py release RUN_DIR [RUN_DIR ...] --out docs/release.png
        Hopper-v4 eval returns beside the authors' NC-LQL release run on this machine type (RELEASE_HOPPER below)
    python scripts/figures.py bandit --som runs/.../som.pt --nc-lql runs/.../nc_lql.pt --out docs/bandit.png
        MultimodalBandit-v0's reward landscape with 500 actions from SOM (N = 1 and N = 32) and NC-LQL

Bad input (no records, a file of another format, a run that stopped early, a page naming an unknown table) stops
with one sentence and exit status 2.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import warnings

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from scripts import bandit  # noqa: E402

RESULTS = os.path.join(ROOT, "results")
TASK_ORDER = ["HalfCheetah-v4", "Hopper-v4", "Walker2d-v4", "Ant-v4", "Humanoid-v4"]
# the eval tags the scripts write, with the label suffix each gets (SOM: best-of-N, N = 1, zero noise)
EVAL_TAGS = {
    "eval/episodic_return": "",
    "eval/episodic_return_n1": "N = 1",
    "eval/episodic_return_zero_noise": "zero noise",
}


def run_folders(path: str) -> list[str]:
    """The run directories at or under `path` (those holding TensorBoard events)."""
    if glob.glob(os.path.join(path, "events.*")):
        return [path]
    return sorted(os.path.dirname(p) for p in glob.glob(os.path.join(path, "**", "events.*"), recursive=True))


RECORD_FORMAT = "som-nc_lql-run/1"
MAX_EPISODE_POINTS = 300


class RecordError(SystemExit):
    """Bad input to export / tables: one sentence on stderr, exit status 2."""

    def __init__(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        super().__init__(2)


def read_events(run_dir: str) -> dict:
    """{tag: [(step, wall_time, value), ...]} of every scalar a run logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.wall_time, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def read_tag(run_dir: str, tag: str) -> tuple[np.ndarray, np.ndarray]:
    events = read_events(run_dir).get(tag, [])
    return np.array([e[0] for e in events]), np.array([e[2] for e in events])


def binned(steps: list, values: list, max_points: int) -> tuple[list, list]:
    """At most `max_points` points: consecutive bins of equal count, each its last step and its values' mean."""
    if len(steps) <= max_points:
        return list(steps), list(values)
    edges = np.linspace(0, len(steps), max_points + 1).round().astype(int)
    return ([int(steps[b - 1]) for b in edges[1:]],
            [float(np.mean(values[a:b])) for a, b in zip(edges[:-1], edges[1:])])  # fmt: skip


def phase_times(events: dict, segments: list[tuple[float, float]], learning_starts: int) -> dict:
    """Seconds spent before and after `learning_starts` steps, summed over the run's processes (`segments`, each
    (start, end) wall time): within a process the warm-up ends at the first event logged at or past it."""
    stamps = sorted((wall, step) for tag in events.values() for step, wall, _ in tag)
    warm_up = training = 0.0
    for start, end in segments:
        inside = [(wall, step) for wall, step in stamps if start <= wall <= end]
        switch = next((wall for wall, step in inside if step >= learning_starts), end)
        warm_up += max(switch - start, 0.0)
        training += max(end - switch, 0.0)
    return {"warm_up": warm_up, "training": training}


def export_run(run_dir: str) -> dict:
    """One run folder -> its record (a dict, written as JSON): the evaluations, the training episodes (binned), the
    wall time and steps per second per phase, and the command, commit, versions and machine from run_info.jsonl."""
    info_path = os.path.join(run_dir, "run_info.jsonl")
    if not os.path.exists(info_path):
        raise RecordError(f"{run_dir} has no run_info.jsonl (was it written by this code?).")
    lines = [json.loads(line) for line in open(info_path) if line.strip()]
    starts = [line for line in lines if line["event"] == "start"]
    ends = {i: line for i, line in enumerate(lines) if line["event"] == "end"}
    if not starts or not ends:
        raise RecordError(f"{info_path} has no finished process: the run is still going or was killed.")
    first, flags = starts[0], run_flags(run_dir)
    total, learning_starts = int(flags.get("total_timesteps", 0)), int(flags.get("learning_starts", 0))
    events = read_events(run_dir)
    evals = {tag: events[tag] for tag in EVAL_TAGS if tag in events}
    last_eval = max((e[0] for tag in evals.values() for e in tag), default=0)
    if "eval/episodic_return" not in evals or last_eval < total:
        raise RecordError(f"{run_dir} stopped before its last evaluation (step {last_eval:,} of {total:,}); "
                          "continue it with --resume before exporting it.")  # fmt: skip
    segments, pending = [], None
    for line in lines:  # each start, paired with the end that follows it (a killed process has none)
        if line["event"] == "start":
            pending = line["time"]
        elif pending is not None:
            segments.append((pending, line["time"]))
            pending = None
    seconds = phase_times(events, segments, learning_starts)
    episodes = events.get("charts/episodic_return", [])
    steps, returns = binned([e[0] for e in episodes], [e[2] for e in episodes], MAX_EPISODE_POINTS)
    name = os.path.basename(os.path.abspath(run_dir)).split("__")
    return {
        "format": RECORD_FORMAT,
        "env_id": flags.get("env_id", name[0]),
        "exp_name": flags.get("exp_name", name[1]),
        "seed": int(flags.get("seed", name[2])),
        "command": first["command"],
        "commit": first["commit"],
        "commits": sorted({line["commit"] for line in starts}),
        "versions": first["versions"],
        "machine": first["machine"],
        "matmul_gflops": round(first["matmul_gflops"], 1),
        "total_timesteps": total,
        "learning_starts": learning_starts,
        "processes": len(starts),
        "evaluations": {
            tag: {"steps": [e[0] for e in ev], "returns": [round(e[2], 2) for e in ev]} for tag, ev in evals.items()
        },  # fmt: skip
        "training_episodes": {
            "steps": steps,
            "returns": [round(r, 2) for r in returns],
            "episodes": len(episodes),
        },  # fmt: skip
        "wall_time_s": {phase: round(s, 1) for phase, s in seconds.items()},
        "steps_per_second": {
            "warm_up": round(learning_starts / seconds["warm_up"], 1) if seconds["warm_up"] else None,
            "training": round((total - learning_starts) / seconds["training"], 1) if seconds["training"] else None,
        },
    }


def record_name(record: dict) -> str:
    return f"{record['exp_name']}__{record['env_id'].replace(':', '_').replace('/', '_')}__{record['seed']}.json"


def export(paths: list[str], out: str) -> None:
    runs = [run for path in paths for run in run_folders(path)]
    if not runs:
        raise RecordError(f"no run folders (with TensorBoard events) under {', '.join(paths)}.")
    os.makedirs(out, exist_ok=True)
    for run in runs:
        record = export_run(run)
        path = os.path.join(out, record_name(record))
        with open(path, "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
        print(f"wrote {path}")


def load_records(folder: str) -> list[dict]:
    """Every record under `folder` (recursively); refuses a file of another format in one sentence."""
    files = sorted(glob.glob(os.path.join(folder, "**", "*.json"), recursive=True))
    if not files:
        raise RecordError(f"no run records (*.json) under {folder}.")
    records = []
    for path in files:
        try:
            record = json.load(open(path))
        except (OSError, json.JSONDecodeError) as exc:
            raise RecordError(f"{path} is not a readable JSON record ({exc}).") from None
        if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
            raise RecordError(f"{path} is not a run record of format {RECORD_FORMAT} (see figures.py export).")
        records.append({**record, "path": path})
    return records


LAST_EVALS = 4  # a run's score: the mean of its last four evaluations (CleanRL's tables take the last ones too)
BASELINE = "sac_baseline.py"  # every ratio and aggregate is against SAC's runs of the same set


def script_of(record: dict) -> str:
    return os.path.basename(record["command"].split()[1])


# what a run set holds when complete: a table marks what its records lack ("not run", "2 of 3 seeds")
SETS = {"five_tasks": {"tasks": TASK_ORDER, "seeds": [1, 2, 3], "scripts": [BASELINE, "som.py", "nc_lql.py"]}}
SCRIPT_TAGS = {"som.py": list(EVAL_TAGS), BASELINE: ["eval/episodic_return"], "nc_lql.py": ["eval/episodic_return"]}


def set_of(records: list[dict]) -> dict:
    """The set these records belong to (SETS, by their folder's name), or what the records themselves hold."""
    names = {os.path.basename(os.path.dirname(r["path"])) for r in records if "path" in r}
    return SETS.get(names.pop(), {}) if len(names) == 1 else {}


def method_rows(records: list[dict]) -> list[tuple[str, str, str]]:
    """(label, script, tag) per evaluated policy, SAC first: SOM's best-of-N, N = 1 and zero noise are three rows."""
    order = {BASELINE: 0, "som.py": 1, "nc_lql.py": 2}
    rows = {
        (order[s], list(EVAL_TAGS).index(t), s, t) for s in set_of(records).get("scripts", []) for t in SCRIPT_TAGS[s]
    }
    for record in records:
        script = script_of(record)
        for tag in record["evaluations"]:
            rows.add((order.get(script, 3), list(EVAL_TAGS).index(tag), script, tag))
    labels = {BASELINE: "SAC (Stable-Baselines3), mean action", "som.py": "som.py", "nc_lql.py": "nc_lql.py"}
    out = []
    for _, _, script, tag in sorted(rows):
        suffix = EVAL_TAGS[tag] or (f"best-of-{record_n(records, script)}" if script == "som.py" else "")
        out.append((labels.get(script, script) + (f", {suffix}" if suffix else ""), script, tag))
    return out


def record_n(records: list[dict], script: str) -> str:
    """SOM's N of best-of-N, read from its commands (32 unless a command says otherwise)."""
    values = set()
    for record in records:
        if script_of(record) == script:
            words = record["command"].split()
            values.add(words[words.index("--num-candidates") + 1] if "--num-candidates" in words else "32")
    return "/".join(sorted(values)) or "N"


def run_score(record: dict, tag: str) -> float:
    returns = record["evaluations"][tag]["returns"]
    return float(np.mean(returns[-LAST_EVALS:]))


def score_grid(records: list[dict]) -> tuple[list[str], list[int], dict]:
    """Tasks (in TASK_ORDER), seeds, and {(script, tag): {task: {seed: score}}}."""
    spec = set_of(records)
    tasks = {r["env_id"] for r in records} | set(spec.get("tasks", []))
    tasks = sorted(tasks, key=lambda t: (TASK_ORDER.index(t) if t in TASK_ORDER else 99, t))
    seeds = sorted({r["seed"] for r in records} | set(spec.get("seeds", [])))
    grid: dict = {}
    for record in records:
        for tag in record["evaluations"]:
            cell = grid.setdefault((script_of(record), tag), {}).setdefault(record["env_id"], {})
            cell[record["seed"]] = run_score(record, tag)
    return tasks, seeds, grid


def task_table(records: list[dict]) -> list[str]:
    """Per task: the mean +- standard deviation over seeds of each run's score; a cell short of seeds says so."""
    tasks, seeds, grid = score_grid(records)
    lines = [f"| method | {' | '.join(tasks)} |", "|---" + "|---:" * len(tasks) + "|"]
    for label, script, tag in method_rows(records):
        cells = []
        for task in tasks:
            values = list(grid.get((script, tag), {}).get(task, {}).values())
            if not values:
                cells.append("not run")
                continue
            cell = f"{np.mean(values):.1f} ± {np.std(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"
            cells.append(cell + (f" ({len(values)} of {len(seeds)} seeds)" if len(values) < len(seeds) else ""))
        lines.append(f"| {label} | {' | '.join(cells)} |")
    return lines


def complete_tasks(grid: dict, script: str, tag: str, tasks: list[str], seeds: list[int]) -> list[str]:
    """The tasks on which both this method and SAC have every seed."""
    base = grid.get((BASELINE, "eval/episodic_return"), {})
    mine = grid.get((script, tag), {})
    return [t for t in tasks if all(s in base.get(t, {}) and s in mine.get(t, {}) for s in seeds)]


def aggregate_table(records: list[dict], reps: int = 2000) -> list[str]:
    """Over the tasks where a method and SAC have every seed: the interquartile mean of SAC-normalised scores (each
    run's score over SAC's mean on its task) and the probability that a run of the method beats a run of SAC, each
    with a 95% stratified-bootstrap interval (rliable, `reps` resamples, a fixed random state)."""
    from rliable import library as rly
    from rliable import metrics

    tasks, seeds, grid = score_grid(records)
    base = grid.get((BASELINE, "eval/episodic_return"), {})
    lines = ["| method | tasks | IQM of score / SAC's mean (95% CI) | P(beats SAC) (95% CI) |", "|---|---|---:|---:|"]
    for label, script, tag in method_rows(records):
        if script == BASELINE:
            continue
        kept = [t for t in complete_tasks(grid, script, tag, tasks, seeds) if np.mean(list(base[t].values())) > 0]
        if not kept:
            lines.append(f"| {label} | none yet with every seed of it and of SAC | | |")
            continue
        mine = np.array([[grid[(script, tag)][t][s] for t in kept] for s in seeds])  # (runs, tasks)
        sac = np.array([[base[t][s] for t in kept] for s in seeds])
        normalised = {"m": mine / sac.mean(axis=0)}
        with warnings.catch_warnings():  # arch's note on RandomState; the fixed state keeps the table reproducible
            warnings.simplefilter("ignore", FutureWarning)
            iqm, iqm_ci = rly.get_interval_estimates(normalised, lambda x: np.array([metrics.aggregate_iqm(x)]),
                                                     reps=reps, random_state=np.random.RandomState(0))  # fmt: skip
            poi, poi_ci = rly.get_interval_estimates({"m": [mine, sac]}, metrics.probability_of_improvement,
                                                     reps=reps, random_state=np.random.RandomState(0))  # fmt: skip
        short = ", ".join(t.split("-")[0] for t in kept)
        (iqm_value,), (poi_value,) = np.ravel(iqm["m"]), np.ravel(poi["m"])
        (iqm_low, iqm_high), (poi_low, poi_high) = np.ravel(iqm_ci["m"]), np.ravel(poi_ci["m"])
        lines.append(f"| {label} | {short} ({len(seeds)} seeds) | {iqm_value:.2f} ({iqm_low:.2f} to {iqm_high:.2f}) "
                     f"| {poi_value:.2f} ({poi_low:.2f} to {poi_high:.2f}) |")  # fmt: skip
    return lines


def provenance(records: list[dict]) -> list[str]:
    """One line per script: its runs' commit(s), machine, package versions and mean wall time per run."""
    lines = []
    for script in sorted({script_of(r) for r in records}, key=lambda s: (s != BASELINE, s)):
        mine = [r for r in records if script_of(r) == script]
        commits = sorted({c for r in mine for c in r["commits"]})
        versions = mine[0]["versions"]
        minutes = np.mean([sum(r["wall_time_s"].values()) for r in mine]) / 60
        lines.append(f"- `{script}`: {len(mine)} runs at commit {', '.join(commits)}; {mine[0]['machine']}; torch "
                     f"{versions.get('torch')}, gymnasium {versions.get('gymnasium')}, mujoco {versions.get('mujoco')}"
                     f"; {minutes:.0f} min per run on average")  # fmt: skip
    return lines


BENCHMARK_FORMAT = "som-nc_lql-benchmark/1"


def speed_table(record: dict) -> list[str]:
    """tests/benchmark.py's record as its table: eager and compiled ms, speed-up, achieved GFLOP/s and the FLOP floor
    (each row's matmul FLOPs at the same run's plain-matmul rate), then the run's facts in one line."""
    lines = ["| what | eager ms | compiled ms | speed-up | eager GFLOP/s | compiled GFLOP/s | FLOP floor ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in record["rows"]:
        gflop, e, c = row["gflop"], row["eager_ms"], row["compiled_ms"]
        rate = (lambda ms, gflop=gflop: f"{gflop / ms * 1e3:.0f}") if gflop else (lambda ms: "")
        floor = f"{gflop / record['matmul_gflops'] * 1e3:.1f}" if gflop else ""
        lines.append(f"| {row['what']} | {e:.2f} | {c:.2f} | {e / c:.1f}x | {rate(e)} | {rate(c)} | {floor} |")
    sizes, versions = record["sizes"], record["versions"]
    lines += ["", f"`{record['command']}` at commit {record['commit']}: {record['machine']}, torch "
              f"{versions.get('torch')}, {record['device']}; obs {sizes['obs']}, act {sizes['act']}, batch "
              f"{sizes['batch']}, K {sizes['K']}, N {sizes['N']}; plain matmul {record['matmul_gflops']} GFLOP/s "
              "in the same run."]  # fmt: skip
    return lines


# The authors' NC-LQL release (JAX, jit), timed on this project's machine type: ms per call
RELEASE_MS = {"NC-LQL action, one observation": 0.645, "NC-LQL action, 5 observations": 7.7,
              "NC-LQL full update": 102.5}  # fmt: skip


def speed_summary(record: dict) -> list[str]:
    """The README's speed table: each script's compiled update against its FLOP floor, and NC-LQL's compiled times
    against the authors' release (RELEASE_MS)."""
    lines = ["| what | `--compile` ms | against the FLOP floor | against the authors' release (JAX, jit) |",
             "|---|---:|---:|---:|"]  # fmt: skip
    for row in record["rows"]:
        name = row["what"].replace("**", "")
        release = next((ms for key, ms in RELEASE_MS.items() if name.startswith(key)), None)
        if not (name.startswith(("SOM full update (", "NC-LQL full update")) or release):
            continue
        c = row["compiled_ms"]
        floor = f"{c / (row['gflop'] / record['matmul_gflops'] * 1e3):.2f}x the floor" if row["gflop"] else ""
        versus = (
            "" if release is None else f"{release / c:.1f}x faster" if c < release else f"{c / release:.1f}x slower"
        )
        lines.append(f"| {name} | {c:.2f} | {floor} | {versus} |")
    return lines


def generated_tables(results: str = RESULTS) -> dict[str, list[str]]:
    """Every table the pages show, by name: {set}/tasks, {set}/aggregate and {set}/runs for each folder of run
    records; speed/{name} for each benchmark record results/speed/{name}.json."""
    tables = {}
    for path in sorted(glob.glob(os.path.join(results, "speed", "*.json"))):
        record = json.load(open(path))
        if record.get("format") != BENCHMARK_FORMAT:
            raise RecordError(
                f"{path} is not a benchmark record of format {BENCHMARK_FORMAT} (tests/benchmark.py --out)."
            )
        tables[f"speed/{os.path.basename(path)[:-5]}"] = speed_table(record)
        tables[f"speed/{os.path.basename(path)[:-5]}_summary"] = speed_summary(record)
    for folder in sorted(glob.glob(os.path.join(results, "*", ""))):
        if os.path.basename(folder.rstrip("/")) == "speed":
            continue
        name, records = os.path.basename(folder.rstrip("/")), load_records(folder)
        tables[f"{name}/tasks"] = task_table(records)
        tables[f"{name}/aggregate"] = aggregate_table(records)
        tables[f"{name}/runs"] = provenance(records)
    return tables


BLOCK = re.compile(r"(<!-- table (\S+) -->\n)(.*?)(<!-- end table -->)", re.S)


def page_blocks(text: str) -> dict[str, str]:
    return {m.group(2): m.group(3) for m in BLOCK.finditer(text)}


def fill_pages(pages: list[str], tables: dict[str, list[str]], write: bool) -> list[str]:
    """Put each generated table between its markers in `pages`; returns the names that differ (written if `write`).
    A marker naming no generated table is refused in one sentence."""
    stale = []
    for page in pages:
        text = open(page).read()
        for name in page_blocks(text):
            if name not in tables:
                raise RecordError(f"{page} shows table {name!r}, which no records under {RESULTS}/ give.")

        def filled(m, page=page):
            body = "\n".join(tables[m.group(2)]) + "\n"
            if body != m.group(3):
                stale.append(f"{os.path.relpath(page, ROOT)}: {m.group(2)}")
            return m.group(1) + body + m.group(4)

        new = BLOCK.sub(filled, text)
        if write and new != text:
            open(page, "w").write(new)
    return stale


def pages() -> list[str]:
    return [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def plot_curves(records: list[dict], out: str) -> None:
    tasks, _, _ = score_grid(records)
    scripts = sorted({script_of(r) for r in records}, key=lambda s: (s != BASELINE, s))
    colors = {script: f"C{i}" for i, script in enumerate(scripts)}  # one colour per script in every panel
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        if not any(r["env_id"] == task for r in records):
            ax.text(0.5, 0.5, "no records yet", ha="center", va="center", transform=ax.transAxes, color="gray")
            ax.set_title(task)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        for label, script, tag in method_rows(records):
            runs = [r["evaluations"][tag] for r in records if r["env_id"] == task and script_of(r) == script
                    and tag in r["evaluations"]]  # fmt: skip
            if not runs:
                continue
            n = min(len(run["steps"]) for run in runs)
            steps, values = np.array(runs[0]["steps"][:n]), np.array([run["returns"][:n] for run in runs])
            style = {"": "-", "N = 1": "--", "zero noise": ":"}[EVAL_TAGS[tag]]
            ax.plot(steps, values.mean(0), style, color=colors[script], label=f"{label} ({len(runs)} seeds)")
            ax.fill_between(steps, values.min(0), values.max(0), alpha=0.12, color=colors[script])
        label_axes(ax, task, "environment steps", "eval return")
    save(fig, out)


def plot_aggregate(records: list[dict], out: str) -> None:
    rows = [line.strip("|").split("|") for line in aggregate_table(records)[2:]]
    rows = [[c.strip() for c in row] for row in rows if row[2].strip()]
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.5 + 0.45 * len(rows)), squeeze=False)
    for ax, column, title in ((axes[0, 0], 2, "IQM of score / SAC's mean"), (axes[0, 1], 3, "P(beats SAC)")):
        for i, row in enumerate(rows):
            value, low, high = (float(x) for x in re.findall(r"-?[0-9.]+", row[column])[:3])
            ax.errorbar([value], [i], xerr=[[value - low], [high - value]], fmt="o", color=f"C{i}", capsize=3)
        ax.axvline(1.0 if column == 2 else 0.5, color="k", lw=0.8, ls="--")
        ax.set_yticks(range(len(rows)), [row[0] for row in rows], fontsize=8)
        ax.set_title(f"{title} (95% CI)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 1].set_yticks([])
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
    for path in paths:
        for run in run_folders(path):
            _env, exp, seed = os.path.basename(run.rstrip("/")).split("__")[:3]
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    e = sub.add_parser("export")
    e.add_argument("paths", nargs="+")
    e.add_argument("--out", required=True)
    t = sub.add_parser("tables")
    t.add_argument("--write", action="store_true")
    for name in ("curves", "aggregate"):
        c = sub.add_parser(name)
        c.add_argument("records")
        c.add_argument("--out", required=True)
    b = sub.add_parser("bandit")
    b.add_argument("--som", required=True)
    b.add_argument("--nc-lql", default=None)
    b.add_argument("--out", default="docs/bandit.png")
    r = sub.add_parser("release")
    r.add_argument("paths", nargs="+")
    r.add_argument("--out", default="docs/release.png")
    args = p.parse_args()
    if args.what == "export":
        export(args.paths, args.out)
    elif args.what == "tables":
        tables = generated_tables()
        for name, lines in tables.items():
            print(f"<!-- table {name} -->", *lines, "<!-- end table -->", sep="\n")
        stale = fill_pages(pages(), tables, args.write)
        print(("rewrote " if args.write else "differ from the records: ") + (", ".join(stale) or "none"),
              file=sys.stderr)  # fmt: skip
    elif args.what == "curves":
        plot_curves(load_records(args.records), args.out)
    elif args.what == "aggregate":
        plot_aggregate(load_records(args.records), args.out)
    elif args.what == "release":
        plot_release(args.paths, args.out)
    else:
        plot_bandit(args.som, args.nc_lql, args.out)


if __name__ == "__main__":
    main()
