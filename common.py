"""Plumbing shared by som.py and nc_lql.py: flags and their checks, environments, evaluation, videos, logging,
checkpoints and the loop's bookkeeping. No network, loss, sampler or update rule: copy it next to either script."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import time
import warnings
from types import SimpleNamespace
from typing import Callable, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from gymnasium.envs.registration import find_highest_version
from gymnasium.vector import AutoresetMode
from tqdm import tqdm


@dataclasses.dataclass
class RunArgs:
    """The flags of a run that are not the algorithm's; each script's Args extends this."""

    exp_name: str = "run"
    """the name of this experiment (part of the run directory's name)"""
    seed: int = 1
    """seed of the experiment (python, numpy, torch, envs)"""
    torch_deterministic: bool = True
    """set `torch.backends.cudnn.deterministic`"""
    cuda: bool = True
    """train on the GPU when there is one, else on the CPU (the first lines of a run say which); --no-cuda: the CPU"""
    compile: bool = False
    """torch.compile the hot paths: the same math, faster (docs/speed.md) after tens of seconds compiling per graph"""
    cudagraphs: bool = False
    """with --compile on a GPU, also CUDA graphs (inductor's triton.cudagraphs): fewer kernel launches; a replayed
    graph overwrites its last outputs, so the scripts copy each output they keep"""
    track: bool = False
    """mirror the TensorBoard logs to Weights and Biases"""
    wandb_project_name: str = "run"
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
    """continue the run saved in this checkpoint, with its arguments (docs/usage.md: what may change)"""


# ---------------------------------------------------------------- bad input: one sentence, exit status 2
class UserInputError(SystemExit):
    """Bad input from the user: prints `error: <message>` to stderr and exits with status 2."""

    def __init__(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        super().__init__(2)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise UserInputError(message)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def require_flag(args, name: str, valid: bool, what: str) -> None:
    """`--tau must be in (0, 1], got 0.0.` unless `valid`; every numeric flag must also be finite."""
    value = getattr(args, name)
    infinite = math.isinf(value)
    require(valid and not infinite, f"{flag(name)} must be {'a finite number' if infinite else what}, got {value}.")


def check_positive(args, names: list[str]) -> None:
    for name in names:
        require_flag(args, name, getattr(args, name) > 0, "positive")


def validate_run(args) -> None:
    """The checks both scripts share: the run and protocol flags, then the env id."""
    check_positive(args, ["total_timesteps", "num_envs", "learning_starts", "buffer_size", "batch_size", "critic_lr",
                          "reward_scale", "hidden_dim", "num_hidden", "eval_frequency", "eval_episodes",
                          "log_frequency", "checkpoint_frequency"])  # fmt: skip
    require_flag(args, "seed", 0 <= args.seed < 2**32, "in [0, 4294967295]")
    require_flag(args, "gamma", 0 <= args.gamma <= 1, "in [0, 1]")
    require_flag(args, "tau", 0 < args.tau <= 1, "in (0, 1]")
    require(args.batch_size <= args.learning_starts, f"--batch-size ({args.batch_size}) must not exceed "
            f"--learning-starts ({args.learning_starts}).")  # fmt: skip
    require(args.buffer_size >= args.num_envs,
            f"--buffer-size ({args.buffer_size}) must be at least --num-envs ({args.num_envs}).")  # fmt: skip
    require(not args.cudagraphs or args.compile, "--cudagraphs needs --compile (CUDA graphs of the compiled paths).")
    require(not args.cudagraphs or (args.cuda and torch.cuda.is_available()),
            "--cudagraphs needs a CUDA device, and none is in use (no GPU visible, or --no-cuda).")  # fmt: skip
    validate_env_id(args.env_id)


# gymnasium warns that an older id such as Hopper-v4 is out of date; validate_env_id says it once, as a note
warnings.filterwarnings("ignore", message=".*The environment \\S+ is out of date")


def validate_env_id(env_id: str) -> None:
    """A registered id with bounded Box actions; for an id that is not the newest version, one note."""
    try:
        env = gym.make(env_id)
    except ImportError:  # "module:Env-v0" whose module does not import
        raise UserInputError(f"could not import module {env_id.split(':')[0]!r} of environment {env_id!r}.") from None
    except gym.error.Error as exc:  # gymnasium's own hint: "Did you mean: `Hopper`?", or the versions it has
        raise UserInputError(f"unknown environment id {env_id!r} ({str(exc).rstrip('.')}).") from None
    space, spec = env.action_space, env.spec
    env.close()
    if spec.version is not None and spec.version < find_highest_version(spec.namespace, spec.name):
        print(f"note: {env_id} is not the newest version of this environment; the papers' protocol uses the MuJoCo "
              "-v4 ids on purpose.", flush=True)  # fmt: skip
    require(isinstance(space, gym.spaces.Box), f"{env_id} has a {type(space).__name__} action space; this "
            "algorithm needs continuous (Box) actions.")  # fmt: skip
    require(bool(np.isfinite(space.low).all() and np.isfinite(space.high).all()),
            f"{env_id} has an unbounded action space; this algorithm needs finite action bounds.")  # fmt: skip


def pick_device(cuda: bool = True) -> torch.device:
    """The GPU when `cuda` is set and one is present, else the CPU; prints which and why."""
    if cuda and torch.cuda.is_available():
        print(f"device: cuda ({torch.cuda.get_device_name()})", flush=True)
        return torch.device("cuda")
    print(f"device: cpu ({'no CUDA device found' if cuda else '--no-cuda'})", flush=True)
    return torch.device("cpu")


def seed_everything(seed: int, torch_deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = torch_deterministic


# ---------------------------------------------------------------- environments (gymnasium 1.x) and evaluation
def make_env(env_id: str, seed: int, capture_video_dir: Optional[str] = None) -> Callable[[], gym.Env]:
    """A thunk: raw episode returns recorded, actions rescaled to [-1, 1], videos of gymnasium's episodes 0, 1, 8,
    27, ... in `capture_video_dir` if given."""

    def thunk():
        env = make_video_env(env_id, capture_video_dir) if capture_video_dir else gym.make(env_id)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        unit = np.ones(env.action_space.shape, dtype=np.float32)
        env = gym.wrappers.RescaleAction(env, -unit, unit)
        env.action_space.seed(seed)
        return env

    return thunk


def make_vector_env(env_id: str, num_envs: int, seed: int, capture_video_dir: Optional[str] = None):
    """A SyncVectorEnv with same-step autoreset: the observation returned when an episode ends is already the reset
    one, the true last one is in infos["final_obs"], and every step is a real transition."""
    thunks = [make_env(env_id, seed + i, capture_video_dir if i == 0 else None) for i in range(num_envs)]
    envs = gym.vector.SyncVectorEnv(thunks, autoreset_mode=AutoresetMode.SAME_STEP)
    envs.action_space.seed(seed)
    return envs


def real_next_obs(next_obs: np.ndarray, infos: dict) -> np.ndarray:
    """The observation each sub-env really reached: the final one where an episode just ended."""
    if "_final_obs" not in infos:  # the common case: no episode ended, no copy
        return next_obs
    real, ended = next_obs.copy(), infos["_final_obs"]
    real[ended] = np.stack(infos["final_obs"][ended])
    return real


def finished_episodes(infos: dict) -> list[tuple[float, int]]:
    """(return, length) of every episode that ended on this step."""
    episode = infos.get("final_info", {}).get("episode")
    if episode is None:
        return []
    return [(float(episode["r"][i]), int(episode["l"][i])) for i in np.flatnonzero(episode["_r"])]


def evaluate(policy: Callable[[torch.Tensor], torch.Tensor], env_id: str, num_episodes: int, seed: int, device):
    """One episode in each of `num_episodes` sub-envs, one policy call per step (obs (E, S) tensor -> actions in
    [-1, 1]). Returns (returns, lengths)."""
    envs = gym.vector.SyncVectorEnv([make_env(env_id, seed + i) for i in range(num_episodes)])
    obs, _ = envs.reset(seed=seed)
    returns, lengths = np.zeros(num_episodes), np.zeros(num_episodes, dtype=np.int64)
    done = np.zeros(num_episodes, dtype=bool)
    while not done.all():
        with torch.no_grad():
            actions = policy(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
        obs, rewards, terminated, truncated, _ = envs.step(actions)
        returns += np.where(done, 0.0, rewards)
        lengths += ~done
        done |= terminated | truncated
    envs.close()
    return returns, lengths


# ---------------------------------------------------------------- videos: offscreen MuJoCo (EGL, else OSMesa)
def _gl_backend_works(backend: str) -> bool:
    """Whether MuJoCo opens an offscreen context with `backend`, tried in a child process (a failed try would leave
    PyOpenGL bound to that platform in this one)."""
    probe = f"from mujoco.{backend} import GLContext\nc = GLContext(16, 16)\nc.make_current()\nc.free()"
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        return subprocess.run([sys.executable, "-c", probe], env=dict(os.environ, MUJOCO_GL=backend), timeout=120,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0  # fmt: skip
    return False


def pick_offscreen_gl() -> Optional[str]:
    """On Linux without a screen and with MUJOCO_GL unset, set it to EGL if that works, else OSMesa. Returns
    MUJOCO_GL afterwards (None: unset)."""
    headless = sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if headless and not os.environ.get("MUJOCO_GL"):
        working = next((b for b in ("egl", "osmesa") if _gl_backend_works(b)), None)  # EGL is not tried twice
        if working:
            os.environ["MUJOCO_GL"] = working
    return os.environ.get("MUJOCO_GL") or None


def make_video_env(env_id: str, folder: str, episode_trigger: Optional[Callable[[int], bool]] = None,
                   name_prefix: str = "rl-video") -> gym.Env:  # fmt: skip
    """`env_id` in gymnasium's RecordVideo. One frame is rendered here, so a missing renderer or video writer stops
    with one sentence, not mid-run."""
    backend = pick_offscreen_gl()
    try:
        import moviepy  # noqa: F401  (RecordVideo's writer)
    except ImportError:
        raise UserInputError("videos need MoviePy (the video writer): pip install -r requirements.txt.") from None
    env = None
    try:
        with warnings.catch_warnings():  # an env without that render mode: our one sentence, not gymnasium's warning
            warnings.filterwarnings("ignore", message=".*is being initialised with render_mode")
            env = gym.make(env_id, render_mode="rgb_array")
        env.reset()
        frame = env.render()
        require(isinstance(frame, np.ndarray), f"{env_id} rendered {type(frame).__name__}, not an image.")
    except Exception as exc:  # noqa: BLE001 - any renderer failure gets the same one sentence
        mujoco = env is not None and "mujoco" in type(env.unwrapped).__module__
        with contextlib.suppress(Exception):
            env.close()
        hint = (f"; MUJOCO_GL={backend or '(unset)'}: for MuJoCo without a screen install Mesa's EGL (Debian/Ubuntu: "
                "apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri) or OSMesa (apt-get install libosmesa6), or set "
                "MUJOCO_GL to a backend that works here" if mujoco else "")  # fmt: skip
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise UserInputError(f"could not render {env_id} ({type(exc).__name__}: {reason}){hint}.") from None
    return gym.wrappers.RecordVideo(env, folder, episode_trigger, name_prefix=name_prefix, disable_logger=True)


# ---------------------------------------------------------------- the scripts' activation, --compile, Polyak
def mish(x: torch.Tensor) -> torch.Tensor:
    """Mish(x) = x tanh(softplus(x)), the NC-LQL release's activation. Compiled: one exp that inductor fuses
    (docs/speed.md), tanh(softplus(x)) = p / (p + 2), p = n (n + 2), n = e^x, x clamped at 20 (the ratio is 1 there)."""
    if torch.compiler.is_compiling():
        n = torch.exp(x.clamp(max=20.0))
        p = n * (n + 2.0)
        return x * p / (p + 2.0)
    return nn.functional.mish(x)


def compile_hot(fn: Callable, device: torch.device, cudagraphs: bool = False) -> Callable:
    """torch.compile on one hot function (LeanRL's pattern), one graph per input shape; a C++ wrapper on the CPU, CUDA
    graphs on the GPU with `cudagraphs`, and Mish's derivative not recomputed inside reductions (docs/speed.md)."""
    options = {"realize_opcount_threshold": 8}
    if device.type == "cpu":
        options["cpp_wrapper"] = True
    elif cudagraphs:
        options["triton.cudagraphs"] = True
    return torch.compile(fn, dynamic=False, options=options)


def hot_functions(functions: list[Callable], compile: bool, device: Optional[torch.device] = None,
                  cudagraphs: bool = False) -> SimpleNamespace:  # fmt: skip
    """`functions` by name, as they are or with `compile` each through compile_hot (each script's `hot_paths`)."""
    device = device or torch.device("cpu")
    return SimpleNamespace(**{fn.__name__: compile_hot(fn, device, cudagraphs) if compile else fn for fn in functions})


def cuda_graph_step(args) -> None:
    """With --cudagraphs, at the top of each loop step: a new step of the CUDA graphs (outputs of the last may be
    overwritten; what the loop keeps of them is a copy)."""
    if args.cudagraphs:
        torch.compiler.cudagraph_mark_step_begin()


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- (1 - tau) target + tau online, one fused foreach call."""
    torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), tau)


# ---------------------------------------------------------------- logging and progress
class Logger:
    """TensorBoard events under the run directory, mirrored to wandb with `track`. `resume_step`: continue a run's
    event file, dropping what was logged after its checkpoint."""

    def __init__(self, run_dir: str, args, track: bool = False, project: str = "", entity: Optional[str] = None,
                 resume_step: Optional[int] = None):  # fmt: skip
        from torch.utils.tensorboard import SummaryWriter

        created = not os.path.isdir(run_dir)
        try:
            os.makedirs(run_dir, exist_ok=True)
            open(os.path.join(run_dir, ".write_test"), "w").close()
            os.remove(os.path.join(run_dir, ".write_test"))
        except OSError as exc:
            raise UserInputError(f"cannot write the run directory {run_dir!r} ({exc.strerror}).") from None
        try:
            if track:
                start_wandb(run_dir, args, project, entity, resume_step is not None)
        except UserInputError:
            if created:  # leave nothing behind for a run that never started
                with contextlib.suppress(OSError):
                    os.rmdir(run_dir)
            raise
        self.last_values: dict = {}  # the last finite value of each tag, for the NaN message
        self.writer = SummaryWriter(run_dir, purge_step=None if resume_step is None else resume_step + 1)
        table = "\n".join(f"|{k}|{v}|" for k, v in {**vars(args), "commit": source_commit()}.items())
        self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
        # one line per start and end of this process: what scripts/figures.py export puts in the run's record
        self.info_path, self.last_step = os.path.join(run_dir, "run_info.jsonl"), resume_step or 0
        self.write_info(event="start", step=self.last_step, command=command_line(),
                        commit=source_commit(), versions=package_versions(), machine=machine_description(),
                        matmul_gflops=matmul_gflops())  # fmt: skip

    def write_info(self, **info) -> None:
        with open(self.info_path, "a") as f:
            f.write(json.dumps({"time": time.time(), **info}) + "\n")

    def scalars(self, values: dict, step: int) -> dict:
        """Log floats or 0-d tensors (moved to the host in ONE transfer); returns the floats."""
        floats, keys = dict(values), [k for k, v in values.items() if isinstance(v, torch.Tensor)]
        if keys:
            floats.update(zip(keys, torch.stack([values[k].detach().float().reshape(()) for k in keys]).tolist()))
        self.last_step = max(self.last_step, step)
        for key, value in floats.items():
            self.writer.add_scalar(key, value, step)
            if math.isfinite(value):
                self.last_values[key] = (value, step)
        return floats

    def close(self) -> None:
        self.write_info(event="end", step=self.last_step)
        self.writer.close()
        if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
            sys.modules["wandb"].finish()


def source_commit() -> str:
    """The git commit of this file's checkout, with "+" when tracked files have changed; "unknown" outside git."""
    git = ["git", "-C", os.path.dirname(os.path.abspath(__file__)), "describe", "--always", "--dirty=+", "--exclude=*"]
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        described = subprocess.run(git, capture_output=True, text=True, timeout=10)
        if described.returncode == 0:
            return described.stdout.strip()
    return "unknown"


def command_line() -> str:
    """This process's command, its script named relative to this checkout (as the README's commands name it)."""
    script = os.path.abspath(sys.argv[0])
    checkout = os.path.dirname(os.path.abspath(__file__))
    if script.startswith(checkout + os.sep):
        script = os.path.relpath(script, checkout)
    return shlex.join(["python", script, *sys.argv[1:]])


def package_versions() -> dict:
    import importlib.metadata

    names = ["torch", "gymnasium", "mujoco", "numpy", "stable-baselines3"]
    found = {}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return {"python": platform.python_version(), **found}


def machine_description() -> str:
    """One line: the CPU model, its core count and the GPU when there is one."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads{gpu}"


def matmul_gflops(size: int = 256, seconds: float = 0.2) -> float:
    """This process's plain float32 matmul rate on the CPU (GFLOP/s): speeds compare within one machine and day."""
    a = torch.ones(size, size)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        calls += 1
    return 2 * size**3 * calls / (time.perf_counter() - start) / 1e9


def start_wandb(run_dir: str, args, project: str, entity: Optional[str], resuming: bool) -> None:
    """wandb.init mirroring the TensorBoard files; any failure is one sentence that says how to log offline."""
    try:
        import wandb
    except ImportError:
        raise UserInputError("--track needs the wandb package: pip install -r requirements.txt.") from None
    try:
        wandb.init(project=project, entity=entity, sync_tensorboard=True, config=vars(args), save_code=True,
                   name=os.path.basename(run_dir), resume="allow" if resuming else None)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - wandb raises many kinds (UsageError, CommError, timeouts)
        reason = " ".join(str(exc).split("\n")[0].split()).split(". ")[0] or type(exc).__name__  # its first sentence
        with contextlib.suppress(Exception):
            wandb.finish(exit_code=1, quiet=True)
        raise UserInputError(f"--track could not start Weights and Biases ({reason.rstrip('.')}): run `wandb login`, "
                             "or log offline with WANDB_MODE=offline (upload later with `wandb sync "
                             "wandb/offline-run-*`).") from None  # fmt: skip


class Progress:
    """tqdm's bar for each phase of a run, the uniform warm-up and then training, each with its own smoothed rate and
    ETA (steps before a --resume do not count). On a terminal it redraws twice a second; elsewhere (a log file) it
    prints one plain line a minute."""

    def __init__(self, total_steps: int, learning_starts: int, start_step: int = 0, stream=None):
        self.total, self.learning_starts, self.stream = total_steps, learning_starts, stream or sys.stdout
        self.tty, stream = bool(getattr(self.stream, "isatty", lambda: False)()), self.stream

        def plain_line(text: str) -> None:  # off a terminal (a log file, Slurm's output): one line per redraw
            if text.strip():
                print(text.replace("\r", "").strip(), file=stream, flush=True)  # `stream`, not self: no cycle

        self.lines = SimpleNamespace(write=plain_line, flush=stream.flush)
        self.bar = self._bar(start_step)

    def _bar(self, step: int) -> tqdm:
        warmup = step < self.learning_starts
        return tqdm(total=self.learning_starts if warmup else self.total, initial=step, unit=" steps",
                    desc="warm-up" if warmup else "training", file=self.stream if self.tty else self.lines,
                    mininterval=0.5 if self.tty else 60.0, smoothing=0.5, dynamic_ncols=self.tty, ascii=not self.tty,
                    miniters=1)  # fmt: skip

    def rate(self) -> float:
        """Steps per second in this phase (tqdm's smoothed rate; 0 before its first measurement)."""
        return self.bar.format_dict["rate"] or 0.0

    def update(self, step: int, updates: int, last_return: Optional[float]) -> None:
        if self.bar.desc == "warm-up" and step >= self.learning_starts:
            self.bar.update(self.learning_starts - self.bar.n)
            self.bar.close()
            self.bar = self._bar(step)
        last = "n/a" if last_return is None else f"{last_return:.1f}"
        self.bar.set_postfix_str(f"{updates} updates, last return {last}", refresh=False)
        self.bar.update(step - self.bar.n)

    def write(self, message: str) -> None:
        """A line (an evaluation result) above the bar."""
        self.bar.write(message, file=self.stream)

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------- saved models and checkpoints
FILE_FORMAT = 2  # the layout of saved models and checkpoints; files of another layout are refused
BUFFER_FIELDS = ("obs", "next_obs", "actions", "rewards", "terminated")


def save_atomic(payload: dict, path: str) -> None:
    """torch.save to a temporary file, then rename: a kill while writing leaves the previous file intact."""
    torch.save({**payload, "format": FILE_FORMAT}, f"{path}.tmp")
    os.replace(f"{path}.tmp", path)


def read_saved(path: str, algorithm: Optional[str] = None, env_id: Optional[str] = None, checkpoint=False) -> dict:
    """The dict save_atomic wrote, by `algorithm`, for `env_id`, a checkpoint if asked; else one sentence."""
    require(os.path.isfile(path), f"no such file: {path!r}.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a truncated zip, a pickle of something else, a text file, ...
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserInputError(f"{path!r} is not a saved model or checkpoint ({reason.rstrip('.')}).") from None
    require(isinstance(payload, dict) and "algorithm" in payload,
            f"{path!r} is not a saved model or checkpoint of som.py or nc_lql.py.")  # fmt: skip
    version = payload.get("format", 1)
    require(version == FILE_FORMAT, f"{path!r} has file format {version}, written by an older version of this code "
            f"with other network layouts; this version reads format {FILE_FORMAT}.")  # fmt: skip
    written_by, saved_env = payload["algorithm"], payload["args"]["env_id"]
    require(algorithm in (None, written_by), f"{path!r} was written by {written_by}, not by {algorithm}.")
    require(env_id in (None, saved_env), f"{path!r} was trained on {saved_env}, not {env_id}.")
    require(not checkpoint or "counters" in payload,
            f"{path!r} is a saved model, not a checkpoint; pass runs/<run>/checkpoint.pt.")  # fmt: skip
    return payload


def known_args(args_class, saved: dict):
    """`args_class` from a saved run's arguments, for evaluation: flags added since take their defaults, flags removed
    since are left out (the networks depend on neither)."""
    fields = {f.name for f in dataclasses.fields(args_class)}
    return args_class(**{name: value for name, value in saved.items() if name in fields})


def load_model(path: str, algorithm: str) -> dict:
    """A --save-model file or a checkpoint.pt as one dict: the networks' state dicts by name, "args", "obs_dim" and
    "act_dim" (a checkpoint's sizes come from its env)."""
    payload = read_saved(path, algorithm)
    if "modules" not in payload:
        return payload
    env = make_env(payload["args"]["env_id"], 0)()
    env.close()
    return {**payload, **payload["modules"], "obs_dim": env.observation_space.shape[0],
            "act_dim": env.action_space.shape[0]}  # fmt: skip


def chronological_rows(size: int, pos: int, capacity: int) -> torch.Tensor:
    """Indices of a ring buffer's filled rows, oldest first: the newest row is the one just before `pos`."""
    return (pos - size + torch.arange(size)) % capacity


def save_checkpoint(path: str, algorithm: str, args, modules: dict, optimizers: dict, counters: dict, envs,
                    buffer=None) -> None:  # fmt: skip
    """Everything to continue a run exactly: networks, optimisers, counters, RNG streams (python, numpy, torch, the
    vector env's action space) and, with `buffer`, its filled rows oldest first (a resume may change its size)."""
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
           "action_space": envs.action_space.np_random.bit_generator.state}  # fmt: skip
    rows = None if buffer is None else chronological_rows(buffer.size, buffer.pos, buffer.capacity).to(buffer.device)
    save_atomic({"algorithm": algorithm, "args": dict(vars(args)), "counters": dict(counters), "rng": rng,
                 "commit": source_commit(),
                 "modules": {name: m.state_dict() for name, m in modules.items()},
                 "optimizers": {name: o.state_dict() for name, o in optimizers.items()},
                 "buffer": None if rows is None else {f: getattr(buffer, f)[rows].cpu() for f in BUFFER_FIELDS}},
                path)  # fmt: skip


def load_checkpoint(path: str, algorithm: str, env_id: str, modules: dict, optimizers: dict, envs,
                    buffer=None) -> dict:  # fmt: skip
    """Restore what save_checkpoint wrote into the given objects; returns the counters. Saved buffer rows go to the
    start of `buffer` (a smaller one keeps the newest): the next write follows the newest, `size` counts only those."""
    payload = read_saved(path, algorithm, env_id, checkpoint=True)
    for name, m in modules.items():
        m.load_state_dict(payload["modules"][name])
    for name, o in optimizers.items():
        o.load_state_dict(payload["optimizers"][name])
    rng = payload["rng"]
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    envs.action_space.np_random.bit_generator.state = rng["action_space"]
    if buffer is not None and payload["buffer"] is not None:
        saved = payload["buffer"]
        kept = min(len(saved["obs"]), buffer.capacity)
        for f in BUFFER_FIELDS:
            getattr(buffer, f)[:kept] = saved[f][len(saved[f]) - kept :].to(getattr(buffer, f).device)
        buffer.size, buffer.pos = kept, kept % buffer.capacity
    return payload["counters"]


# What --resume may change; any other flag given with --resume must agree with the checkpoint.
RESUME_MAY_CHANGE = ("resume", "total_timesteps", "cuda", "compile", "track", "wandb_project_name", "wandb_entity",
                     "save_model", "checkpoint_frequency", "checkpoint_buffer", "eval_frequency", "eval_episodes",
                     "log_frequency")  # fmt: skip


def resume_args(args, path: str, algorithm: str, cli: Optional[list[str]] = None):
    """`--resume PATH` alone continues the run with the checkpoint's arguments: the command line `cli` (default
    sys.argv[1:]) is parsed again with them as defaults, and a given flag outside RESUME_MAY_CHANGE that contradicts
    the checkpoint (another --env-id, --gamma, ...) is refused in one sentence."""
    import tyro

    payload = read_saved(path, algorithm, checkpoint=True)
    fields = [f.name for f in dataclasses.fields(args)]
    differ = ", ".join(flag(name) for name in sorted(set(payload["args"]) ^ set(fields)))
    require(not differ, f"{path!r} was written by a version of {algorithm}.py with other flags ({differ}); continue it "
            f"with the code that wrote it (commit {payload.get('commit', 'unknown')}).")  # fmt: skip
    saved = known_args(type(args), payload["args"])
    merged = tyro.cli(type(args), args=sys.argv[1:] if cli is None else cli, default=saved)
    for name in fields:
        given, kept = getattr(merged, name), getattr(saved, name)
        if name in RESUME_MAY_CHANGE or given == kept:
            continue
        if name == "env_id":
            raise UserInputError(f"{path!r} was trained on {kept}, not {given}; leave out --env-id to continue it.")
        may = ", ".join(flag(n) for n in RESUME_MAY_CHANGE if n in fields and n != "resume")
        raise UserInputError(f"{flag(name)} {given} contradicts {path!r}, which was trained with {kept}; "
                             f"leave it out (on --resume only {may} may change).")  # fmt: skip
    return merged


# ---------------------------------------------------------------- the loop's plumbing
class NonFiniteError(RuntimeError):
    """A loss, an action, a reward or an observation became NaN or inf; the message says which."""


def check_finite(name: str, value) -> None:
    """Raise NonFiniteError(name) if a tensor or array holds NaN/inf: called on each loss BEFORE its optimiser step
    (the networks in memory are still the last good ones), on actions, rewards and observations. One host sync."""
    if not (bool(torch.isfinite(value).all()) if isinstance(value, torch.Tensor) else bool(np.isfinite(value).all())):
        raise NonFiniteError(name)


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, name: str) -> torch.Tensor:
    """One optimiser step on `loss`, checked finite first (a NaN never reaches the weights); returns it detached."""
    check_finite(name, loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach().clone()  # a copy: under CUDA graphs the next replay overwrites the graph's output


class Run:
    """The plumbing around one training loop: --resume, logging, progress, when to log / evaluate / checkpoint,
    SIGINT / SIGTERM (finish the step, checkpoint, exit 0), the NaN stop and the end of the run. `counters` is the
    loop's own dict (global_step, updates and any others), saved in every checkpoint and restored here on --resume."""

    def __init__(self, algorithm: str, args, run_dir: str, envs, modules: dict, optimizers: dict, buffer,
                 counters: dict):  # fmt: skip
        self.algorithm, self.args, self.run_dir, self.envs = algorithm, args, run_dir, envs
        self.modules, self.optimizers, self.buffer, self.counters = modules, optimizers, buffer, counters
        if args.resume:
            counters.update(load_checkpoint(args.resume, algorithm, args.env_id, modules, optimizers, envs, buffer))
            print(f"resumed from {args.resume} at step {counters['global_step']} with {buffer.size} transitions in "
                  "the buffer")  # fmt: skip
        self.logger = Logger(self.run_dir, args, args.track, args.wandb_project_name, args.wandb_entity,
                             resume_step=counters["global_step"] if args.resume else None)  # fmt: skip
        print(f"run directory: {self.run_dir}", flush=True)
        self.checkpoint_path, self.signal = os.path.join(self.run_dir, "checkpoint.pt"), None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: setattr(self, "signal", signal.Signals(signum).name))
        self.progress = Progress(args.total_timesteps, args.learning_starts, start_step=counters["global_step"])

    def write_checkpoint(self, path: str) -> None:
        save_checkpoint(path, self.algorithm, self.args, self.modules, self.optimizers, self.counters, self.envs,
                        self.buffer if self.args.checkpoint_buffer else None)  # fmt: skip

    def log_episodes(self, infos: dict, last_return: Optional[float]) -> Optional[float]:
        """Log the return and length of each episode that ended on this step; returns the latest return."""
        for episode_return, length in finished_episodes(infos):
            self.logger.scalars({"charts/episodic_return": episode_return, "charts/episodic_length": length},
                                self.counters["global_step"])  # fmt: skip
            last_return = episode_return
        return last_return

    def evaluate(self, policies: dict, device) -> None:
        """Each policy (obs tensor -> actions) on the same --eval-episodes episodes: the first logged as
        eval/episodic_return (and _std), the others as eval/episodic_return_{name}; one line printed."""
        step, results = self.counters["global_step"], []
        for i, (name, policy) in enumerate(policies.items()):
            returns, _ = evaluate(policy, self.args.env_id, self.args.eval_episodes, self.args.seed + 1_000_000 + step,
                                  device)  # fmt: skip
            tag = "eval/episodic_return" + ("" if i == 0 else f"_{name}")
            self.logger.scalars({tag: returns.mean(), **({f"{tag}_std": returns.std()} if i == 0 else {})}, step)
            results.append(f"{name} {returns.mean():.1f} +- {returns.std():.1f}")
        self.progress.write(f"eval at {step}: {', '.join(results)}")

    def due(self, every: int) -> bool:
        """True on the vector step that crosses a multiple of `every` environment transitions."""
        step = self.counters["global_step"]
        return step // every > (step - self.args.num_envs) // every

    def log_due(self) -> bool:
        return self.due(self.args.log_frequency)

    def eval_due(self) -> bool:
        """Every --eval-frequency transitions, and at the last step of the run."""
        return self.due(self.args.eval_frequency) or self.counters["global_step"] >= self.args.total_timesteps

    def checkpoint_and_stop(self) -> bool:
        """Write the checkpoint when one is due or a signal came; True (stop the loop) after a signal."""
        if self.due(self.args.checkpoint_frequency) or self.signal:
            self.write_checkpoint(self.checkpoint_path)
        if self.signal:
            path, step = self.checkpoint_path, self.counters["global_step"]
            self.progress.write(f"{self.signal} received: stopped at step {step}, checkpoint written to {path} "
                                f"(continue with --resume {path})")  # fmt: skip
        return self.signal is not None

    @contextlib.contextmanager
    def stop_on_non_finite(self):
        """Around the loop: a NaN / inf (raised before any optimiser or env step uses it) saves
        last_good_checkpoint.pt and exits with status 1 and one sentence."""
        try:
            yield
        except NonFiniteError as err:
            self.progress.close()
            last_good = os.path.join(self.run_dir, "last_good_checkpoint.pt")
            self.write_checkpoint(last_good)
            value, at = self.logger.last_values.get(str(err), (None, None))
            last = "never logged" if value is None else f"its last logged finite value was {value:.6g} at step {at}"
            self.envs.close()
            self.logger.close()
            raise SystemExit(f"error: {err} became NaN or inf at step {self.counters['global_step']} ({last}); "
                             f"the last good state is saved in {last_good}.") from None  # fmt: skip

    def finish(self, model: dict) -> None:
        """With --save-model write `model` (state dicts, sizes) to runs/<run>/<exp_name>.pt; close everything."""
        self.progress.close()
        if self.args.save_model:
            path = os.path.join(self.run_dir, f"{self.args.exp_name}.pt")
            save_atomic({"algorithm": self.algorithm, "args": dataclasses.asdict(self.args), **model}, path)
            print(f"model saved to {path}", flush=True)
        if self.args.compile:
            from torch._dynamo.utils import counters

            print(f"torch.compile built {int(counters['stats']['unique_graphs'])} graphs in this run", flush=True)
        self.envs.close()
        self.logger.close()


def run_name_for(env_id: str, exp_name: str, seed: int) -> str:
    return f"{env_id.replace(':', '_').replace('/', '_')}__{exp_name}__{seed}__{int(time.time())}"


def run_dir_for(args) -> str:
    """runs/{env}__{exp_name}__{seed}__{time}, or the checkpoint's own folder when resuming."""
    if args.resume:
        return os.path.dirname(os.path.abspath(args.resume))
    return os.path.join(args.run_dir, run_name_for(args.env_id, args.exp_name, args.seed))
