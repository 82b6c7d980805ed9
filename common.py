"""Plumbing shared by som.py and nc_lql.py: environments, logging, evaluation, seeding, checkpoints, validation.

Nothing algorithmic lives here (no losses, no samplers, no update rules). Copy this file next to one of the scripts
to use that script in another codebase.

Importing this module registers `MultimodalBandit-v0`, a one-step continuous bandit with two separated reward modes
of different heights, the cheapest place to watch a generative policy put its mass on high-value actions.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
import warnings
from typing import Callable, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from gymnasium.vector import AutoresetMode

# --------------------------------------------------------------------------------------------------------------------
# Errors: one clear sentence and a non-zero exit, never a deep traceback.
# --------------------------------------------------------------------------------------------------------------------


class UserInputError(SystemExit):
    """Bad input from the user. Exits with status 2 and prints `error: <message>` to stderr."""

    def __init__(self, message: str):
        print(f"error: {message}", file=sys.stderr)
        super().__init__(2)


def require(condition: bool, message: str) -> None:
    """Stop with `message` (one sentence) and exit status 2 when `condition` is false."""
    if not condition:
        raise UserInputError(message)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_INTERVAL = re.compile(r"([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])")


def check_ranges(args, **intervals: str) -> None:
    """Each named field of the args dataclass must lie in its interval, written as in maths: "[0, 1]", "(0, 1]",
    "(0, inf)", "[2, inf)". NaN lies in none, and inf is refused too (every flag is a finite number).
    The message is one sentence: `--tau must be in (0, 1], got 0.0.`, `--critic-lr must be positive, got 0.0.`"""
    for name, interval in intervals.items():
        match = _INTERVAL.fullmatch(interval.strip())
        if match is None:
            raise ValueError(f"bad interval {interval!r} for {name}")
        lo_closed, lo_text, hi_text, hi_closed = match[1] == "[", match[2], match[3], match[4] == "]"
        lo, hi = float(lo_text), float(hi_text)
        value = getattr(args, name)
        inside = (lo <= value if lo_closed else lo < value) and (value <= hi if hi_closed else value < hi)
        if inside:
            continue
        if value == hi == math.inf:
            what = "a finite number"
        elif hi == math.inf and lo == 0.0 and not lo_closed:
            what = "positive"
        elif hi == math.inf:
            what = f"at least {lo_text}" if lo_closed else f"greater than {lo_text}"
        else:
            what = f"in {interval.strip()}"
        raise UserInputError(f"{_flag(name)} must be {what}, got {value}.")


def check_positive(args, names: list[str]) -> None:
    """Every field in `names` of the args dataclass must be a positive (finite) number."""
    check_ranges(args, **{name: "(0, inf)" for name in names})


# gymnasium warns that an older id (Hopper-v4) "is out of date", once per gym.make and in colour.
_OUT_OF_DATE = re.compile(r".*The environment \S+ is out of date")


def validate_env_id(env_id: str) -> None:
    """The env id must be registered and have a bounded continuous (Box) action space.

    gymnasium's "out of date" warning for an older version (the papers' MuJoCo -v4 ids) becomes one plain note,
    printed here once; the warning is then silenced for the rest of the process."""
    name = env_id
    if ":" in env_id:  # "module:Env-v0": the module registers Env-v0 when imported
        module, name = env_id.split(":", 1)
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UserInputError(f"could not import module {module!r} of environment {env_id!r} ({exc}).") from None
    try:
        gym.spec(name)
    except gym.error.Error as exc:  # gymnasium's own hint: "Did you mean: `Hopper`?", or the versions it has
        raise UserInputError(f"unknown environment id {env_id!r} ({str(exc).rstrip('.')}).") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = gym.make(env_id)
    space = env.action_space
    env.close()
    for warning in caught:
        if _OUT_OF_DATE.match(str(warning.message)):  # once here, then silenced for the rest of the run
            newer = re.search(r"version `(v\d+)`", str(warning.message))
            print(f"note: {env_id} is not the newest version of this environment (gymnasium suggests "
                  f"{newer[1] if newer else 'a newer one'}); the papers' protocol uses the MuJoCo -v4 ids on purpose.",
                  flush=True)  # fmt: skip
            warnings.filterwarnings("ignore", message=_OUT_OF_DATE.pattern)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    require(
        isinstance(space, gym.spaces.Box),
        f"{env_id} has a {type(space).__name__} action space; this algorithm needs continuous (Box) actions.",
    )
    require(
        bool(np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))),
        f"{env_id} has an unbounded action space; this algorithm needs finite action bounds.",
    )


def pick_device(cuda: bool = True) -> torch.device:
    """The GPU when `cuda` is set (the default) and one is present, else the CPU; prints `device: ...` with the
    reason, so the first lines of a run say where it trains."""
    if cuda and torch.cuda.is_available():
        device = torch.device("cuda")
        print(f"device: cuda ({torch.cuda.get_device_name(device)})", flush=True)
    else:
        device = torch.device("cpu")
        print(f"device: cpu ({'no CUDA device found' if cuda else '--no-cuda'})", flush=True)
    return device


def seed_everything(seed: int, torch_deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = torch_deterministic


# --------------------------------------------------------------------------------------------------------------------
# Environments (gymnasium 1.x)
# --------------------------------------------------------------------------------------------------------------------


class MultimodalBandit(gym.Env):
    """One-step bandit: a constant observation, a 2-D action in [-1, 1]^2, and a reward with two Gaussian bumps.

    reward(a) = 1.0 * exp(-|a - (0.5, 0.5)|^2 / (2 0.15^2)) + 0.6 * exp(-|a - (-0.5, -0.5)|^2 / (2 0.15^2))
    The best mode pays 1.0, the second 0.6, and a uniformly random action earns about 0.06 on average.
    """

    MODES = np.array([[0.5, 0.5], [-0.5, -0.5]], dtype=np.float64)
    HEIGHTS = np.array([1.0, 0.6])
    WIDTH = 0.15

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

    @classmethod
    def reward(cls, action: np.ndarray) -> np.ndarray:
        """Reward of actions with shape (..., 2)."""
        sq_dist = ((np.asarray(action, dtype=np.float64)[..., None, :] - cls.MODES) ** 2).sum(-1)
        return (cls.HEIGHTS * np.exp(-sq_dist / (2 * cls.WIDTH**2))).sum(-1)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        reward = float(self.reward(np.clip(action, -1.0, 1.0)))
        return np.zeros(1, dtype=np.float32), reward, True, False, {}


if "MultimodalBandit-v0" not in gym.registry:
    gym.register("MultimodalBandit-v0", entry_point=MultimodalBandit, max_episode_steps=1)


# --------------------------------------------------------------------------------------------------------------------
# Videos: MuJoCo renders offscreen (EGL, else OSMesa) and gymnasium's RecordVideo writes .mp4 files with MoviePy
# --------------------------------------------------------------------------------------------------------------------

NO_RENDERER_HINT = (
    "for MuJoCo without a screen install Mesa's EGL (Debian/Ubuntu: apt-get install libegl1 libegl-mesa0 "
    "libgl1-mesa-dri) or OSMesa (apt-get install libosmesa6), or set MUJOCO_GL to a backend that works here"
)


def _gl_backend_works(backend: str) -> bool:
    """Whether MuJoCo can make an offscreen OpenGL context with `backend` ("egl" or "osmesa"). Tried in a child
    process (about 0.3 s): a failed try would leave PyOpenGL bound to that platform in this one."""
    probe = f"from mujoco.{backend} import GLContext\nc = GLContext(16, 16)\nc.make_current()\nc.free()"
    env = dict(os.environ, MUJOCO_GL=backend)
    try:
        done = subprocess.run([sys.executable, "-c", probe], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=120)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def pick_offscreen_gl() -> Optional[str]:
    """Set MUJOCO_GL to an offscreen backend when it is unset and there is no screen (Linux without DISPLAY or
    WAYLAND_DISPLAY): EGL if it works, else OSMesa. Returns MUJOCO_GL afterwards (None: unset).

    gymnasium reads MUJOCO_GL when an env first renders, so calling this before making the rendering env is enough;
    calling it before mujoco is imported also keeps mujoco's own default context (mujoco.GLContext) consistent."""
    chosen = os.environ.get("MUJOCO_GL") or None
    headless = sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if chosen is None and headless:
        for backend in ("egl", "osmesa"):
            if _gl_backend_works(backend):
                os.environ["MUJOCO_GL"] = chosen = backend
                break
    return chosen


def make_video_env(env_id: str, folder: str, episode_trigger: Optional[Callable[[int], bool]] = None,
                   name_prefix: str = "rl-video") -> gym.Env:  # fmt: skip
    """`env_id` rendering rgb_array frames, wrapped in gymnasium's RecordVideo: `folder`/`name_prefix`-episode-K.mp4
    for each episode K that `episode_trigger` picks (default: gymnasium's 0, 1, 8, 27, ..., 1000, 2000, ...); an
    episode still running is written when the env is closed. Picks an offscreen backend first (pick_offscreen_gl),
    then renders one frame, so a missing renderer or video writer stops here with one sentence, not mid-run."""
    backend = pick_offscreen_gl()
    try:
        import moviepy  # noqa: F401  (RecordVideo's writer; it brings imageio-ffmpeg and its ffmpeg binary)
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
        if env is not None:
            with contextlib.suppress(Exception):
                env.close()
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        hint = f"; MUJOCO_GL={backend or '(unset)'}: {NO_RENDERER_HINT}" if mujoco else ""
        raise UserInputError(f"could not render {env_id} ({type(exc).__name__}: {reason}){hint}.") from None
    return gym.wrappers.RecordVideo(env, folder, episode_trigger=episode_trigger, name_prefix=name_prefix,
                                    disable_logger=True)  # fmt: skip


def make_env(env_id: str, seed: int, capture_video_dir: Optional[str] = None) -> Callable[[], gym.Env]:
    """A thunk for the vector env: actions rescaled to [-1, 1], episode returns recorded (raw, unscaled).
    With `capture_video_dir`, episodes 0, 1, 8, 27, ... of this env are written there (see make_video_env)."""

    def thunk():
        if capture_video_dir is not None:
            env = make_video_env(env_id, capture_video_dir)
        else:
            env = gym.make(env_id)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        unit = np.ones(env.action_space.shape, dtype=np.float32)
        env = gym.wrappers.RescaleAction(env, -unit, unit)
        env.action_space.seed(seed)
        return env

    return thunk


def make_vector_env(env_id: str, num_envs: int, seed: int, capture_video_dir: Optional[str] = None):
    """`num_envs` copies in a SyncVectorEnv with same-step autoreset.

    With AutoresetMode.SAME_STEP the observation returned on the step an episode ends is already the reset one and
    the true last observation is in infos["final_obs"]: every step is a real transition, nothing to skip.
    """
    thunks = [make_env(env_id, seed + i, capture_video_dir if i == 0 else None) for i in range(num_envs)]
    envs = gym.vector.SyncVectorEnv(thunks, autoreset_mode=AutoresetMode.SAME_STEP)
    envs.action_space.seed(seed)
    return envs


def real_next_obs(next_obs: np.ndarray, infos: dict) -> np.ndarray:
    """The observation each sub-env really reached: the final one where an episode just ended (see make_vector_env)."""
    if "_final_obs" not in infos:
        return next_obs
    real = next_obs.copy()
    for i in np.flatnonzero(infos["_final_obs"]):
        real[i] = infos["final_obs"][i]
    return real


def finished_episodes(infos: dict) -> list[tuple[float, int]]:
    """(return, length) of every episode that ended on this step."""
    if "final_info" not in infos or "episode" not in infos["final_info"]:
        return []
    episode = infos["final_info"]["episode"]
    return [(float(episode["r"][i]), int(episode["l"][i])) for i in np.flatnonzero(episode["_r"])]


def evaluate(policy: Callable[[torch.Tensor], torch.Tensor], env_id: str, num_episodes: int, seed: int, device):
    """Run `num_episodes` episodes as one batch (one env each, one policy call per step); return their returns.

    `policy` maps a (num_episodes, obs_dim) float tensor to actions in [-1, 1]. Each sub-env plays exactly one
    episode; finished ones keep being stepped (their results ignored) until all are done.
    """
    with warnings.catch_warnings():  # a -v4 id: no "out of date" warning (see validate_env_id)
        warnings.filterwarnings("ignore", message=_OUT_OF_DATE.pattern)
        envs = gym.vector.SyncVectorEnv([make_env(env_id, seed + i) for i in range(num_episodes)])
    obs, _ = envs.reset(seed=seed)
    returns = np.zeros(num_episodes)
    lengths = np.zeros(num_episodes, dtype=np.int64)
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


# --------------------------------------------------------------------------------------------------------------------
# The activation of both scripts' networks, and the --compile plumbing
# --------------------------------------------------------------------------------------------------------------------


def mish(x: torch.Tensor) -> torch.Tensor:
    """Mish(x) = x tanh(softplus(x)), the activation of the authors' NC-LQL release.

    Eager: torch's own kernel. Under torch.compile the same function is written with a single exp,
    tanh(softplus(x)) = n (n + 2) / (n (n + 2) + 2) with n = e^x (x clamped at 20, where the ratio is 1 in float32),
    which inductor fuses into the neighbouring kernels; torch's Mish lowering computes exp, log1p and tanh separately
    and was 1.7x slower on this CPU (README, Speed). The two agree to 2e-6 (tests/test_compile.py).
    """
    if torch.compiler.is_compiling():
        n = torch.exp(x.clamp(max=20.0))
        p = n * (n + 2.0)
        return x * p / (p + 2.0)
    return nn.functional.mish(x)


def compile_hot(fn: Callable, device: torch.device) -> Callable:
    """The `--compile` path, LeanRL-style: torch.compile on one hot function (a sampler, a TD target, a loss with its
    backward), which computes the same math as the eager function it wraps (tests/test_compile.py).

    dynamic=False: one graph per input shape (acting, evaluation and the update batch each compile once; see the
    README for the count and the compile time). realize_opcount_threshold=8: inductor otherwise inlines Mish's
    derivative into the matrix-vector reductions of a one-row input-gradient and recomputes it 256 times (measured:
    2.9 -> 1.9 ms per one-observation NC-LQL action). On CUDA the graphs are also captured as CUDA graphs; on the
    CPU the generated wrapper that calls the kernels is C++ instead of Python (cpp_wrapper).
    """
    options = {"realize_opcount_threshold": 8}
    if device.type == "cuda":
        options["triton.cudagraphs"] = True
    else:  # C++ calls the kernels, not Python: 1.9 -> 1.3 ms per one-observation NC-LQL action on one thread
        options["cpp_wrapper"] = True
    return torch.compile(fn, dynamic=False, options=options)


def compiled_graph_count() -> int:
    """How many graphs torch.compile built in this process (each hot function once per input shape)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- (1 - tau) target + tau online, as one fused foreach call."""
    torch._foreach_lerp_(list(target.parameters()), list(online.parameters()), tau)


# --------------------------------------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------------------------------------


class Logger:
    """TensorBoard events under runs/{run_name}/, plus wandb when `track` is set (it mirrors the TensorBoard file)."""

    def __init__(self, run_dir: str, args, track: bool = False, project: str = "", entity: Optional[str] = None,
                 resume_step: Optional[int] = None):  # fmt: skip
        """`resume_step`: continue a run's event file, dropping anything logged after that step."""
        from torch.utils.tensorboard import SummaryWriter

        created = not os.path.isdir(run_dir)
        try:
            os.makedirs(run_dir, exist_ok=True)
            probe = os.path.join(run_dir, ".write_test")
            open(probe, "w").close()
            os.remove(probe)
        except OSError as exc:
            raise UserInputError(f"cannot write the run directory {run_dir!r} ({exc.strerror}).") from None
        if track:
            try:
                start_wandb(run_dir, args, project, entity, resume_step is not None)
            except UserInputError:
                if created:  # leave nothing behind for a run that never started
                    with contextlib.suppress(OSError):
                        os.rmdir(run_dir)
                raise
        self.run_dir = run_dir
        self.last_values: dict = {}  # the last value logged under each tag, for error messages
        # the checkpoint was written after everything logged at its step: keep those, drop what came later
        purge_step = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(run_dir, purge_step=purge_step)
        table = "\n".join(f"|{k}|{v}|" for k, v in vars(args).items())
        self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")

    def scalars(self, values: dict, step: int) -> dict:
        """Log a dict of floats or 0-d tensors; tensors are moved to the host in ONE transfer. Returns the floats."""
        keys = [k for k, v in values.items() if isinstance(v, torch.Tensor)]
        floats = dict(values)
        if keys:
            host = torch.stack([values[k].detach().float().reshape(()) for k in keys]).tolist()
            floats.update(zip(keys, host))
        for key, value in floats.items():
            self.writer.add_scalar(key, value, step)
            if math.isfinite(value):
                self.last_values[key] = (value, step)
        return floats

    def close(self) -> None:
        self.writer.close()
        if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
            sys.modules["wandb"].finish()


def start_wandb(run_dir: str, args, project: str, entity: Optional[str], resuming: bool) -> None:
    """wandb.init mirroring the TensorBoard files. Any failure (no wandb, no login, no network) is one sentence that
    says how to log offline: WANDB_MODE=offline writes the run under ./wandb/, `wandb sync` uploads it later."""
    offline = "log offline with WANDB_MODE=offline (upload later with `wandb sync wandb/offline-run-*`)"
    try:
        import wandb
    except ImportError:
        raise UserInputError("--track needs the wandb package: pip install -r requirements.txt.") from None
    try:
        wandb.init(
            project=project,
            entity=entity,
            sync_tensorboard=True,
            config=vars(args),
            name=os.path.basename(run_dir),
            save_code=True,
            resume="allow" if resuming else None,
        )
    except Exception as exc:  # noqa: BLE001 - wandb raises many kinds (UsageError, CommError, timeouts)
        reason = re.split(r"(?<=\.)\s", " ".join(str(exc).split("\n")[0].split()))[0] or type(exc).__name__
        with contextlib.suppress(Exception):
            wandb.finish(exit_code=1, quiet=True)
        raise UserInputError(f"--track could not start Weights and Biases ({reason.rstrip('.')}): run `wandb login`, "
                             f"or {offline}.") from None  # fmt: skip


def run_name_for(env_id: str, exp_name: str, seed: int) -> str:
    return f"{env_id.replace(':', '_').replace('/', '_')}__{exp_name}__{seed}__{int(time.time())}"


class Progress:
    """The console progress of a run, in two phases: the warm-up (uniform random actions, steps < learning_starts)
    and training, each with its own rate and ETA.

    On a terminal it is a tqdm bar per phase, redrawn at most every `redraw` seconds. Anywhere else (a log file,
    Slurm's output, a pipe) it prints one plain line every `every` seconds and one when a phase ends, never a redraw.
    Shown: steps, steps per second over the last `window` seconds of the current phase (the fast warm-up and the
    steps done before a --resume never count), the phase's ETA at that rate, updates done and the last return.
    `write` prints a message without breaking the bar; `close` ends it.
    """

    def __init__(self, total_steps: int, learning_starts: int, start_step: int = 0, *, window: float = 30.0,
                 every: float = 60.0, redraw: float = 0.5, stream=None, clock=time.monotonic):  # fmt: skip
        self.total, self.learning_starts = total_steps, learning_starts
        self.window, self.every, self.redraw = window, every, redraw
        self.stream = stream if stream is not None else sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.clock = clock
        self.updates, self.last_return, self.bar = 0, None, None
        self._begin_phase(start_step, clock())

    def _begin_phase(self, step: int, now: float) -> None:
        self.step, self.now = step, now
        self.warmup = step < self.learning_starts
        self.phase = "warm-up" if self.warmup else "training"
        self.phase_total = self.learning_starts if self.warmup else self.total
        self.samples = collections.deque([(now, step)])  # (time, step) at least 0.25 s apart: the rate's window
        self.phase_start, self.last_output = (now, step), now
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=self.phase_total, initial=step, desc=self.phase, file=self.stream, leave=True,
                            dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}"
                            "{postfix}")  # fmt: skip

    def rate(self) -> Optional[float]:
        """Steps per second over the last `window` seconds of this phase; None during its first second."""
        t0, s0 = self.samples[0]
        return (self.step - s0) / (self.now - t0) if self.now - t0 >= 1.0 else None

    def stats(self) -> str:
        from tqdm import tqdm

        rate = self.rate()
        speed = "? steps/s" if rate is None else f"{rate:.1f} steps/s" if rate < 100 else f"{rate:.0f} steps/s"
        eta = tqdm.format_interval(max(self.phase_total - self.step, 0) / rate) if rate else "?"
        ret = "n/a" if self.last_return is None else f"{self.last_return:.1f}"
        return f"{speed}, ETA {eta}, {self.updates} updates, last return {ret}"

    def line(self) -> str:
        pct = 100.0 * self.step / max(self.phase_total, 1)
        return f"{self.phase} {self.step}/{self.phase_total} ({pct:.0f}%): {self.stats()}"

    def update(self, step: int, updates: int = 0, last_return: Optional[float] = None) -> None:
        now = self.clock()
        self.updates, self.last_return = updates, last_return
        if self.warmup and step >= self.learning_starts:
            self._end_phase(min(step, self.learning_starts), now)
            self._begin_phase(step, now)
        self.step, self.now = step, now
        if now - self.samples[-1][0] >= 0.25:
            self.samples.append((now, step))
            while len(self.samples) > 2 and self.samples[1][0] <= now - self.window:
                self.samples.popleft()
        if now - self.last_output >= (self.redraw if self.bar is not None else self.every):
            self.last_output = now
            self._show()

    def _show(self) -> None:
        if self.bar is not None:
            self.bar.n = min(self.step, self.phase_total)
            self.bar.set_postfix_str(self.stats(), refresh=False)
            self.bar.refresh()
        else:
            print(self.line(), file=self.stream, flush=True)

    def _end_phase(self, step: int, now: float) -> None:
        from tqdm import tqdm

        self.step, self.now = step, now
        self._show()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        t0, s0 = self.phase_start
        print(f"{self.phase}: {step - s0} steps in {tqdm.format_interval(now - t0)}", file=self.stream, flush=True)

    def write(self, message: str) -> None:
        """Print a line (an evaluation result, ...) above the bar, or plainly when there is none."""
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        """Show the final state and the phase's summary line; safe to call more than once."""
        if self.phase is not None:
            self._end_phase(self.step, self.clock())
            self.phase = None


# --------------------------------------------------------------------------------------------------------------------
# Saved models
# --------------------------------------------------------------------------------------------------------------------


# The layout of saved models and checkpoints; files of another layout are refused in one sentence.
FILE_FORMAT = 2


def save_atomic(payload: dict, path: str) -> None:
    """torch.save (with FILE_FORMAT) to a temporary file, then rename: a kill while writing leaves any previous file
    intact."""
    tmp = f"{path}.tmp"
    torch.save({**payload, "format": FILE_FORMAT}, tmp)
    os.replace(tmp, path)


def read_saved(path: str) -> dict:
    """The dict in a file written by save_atomic; a missing, unreadable or foreign file is one sentence."""
    require(os.path.isfile(path), f"no such file: {path!r}.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a truncated zip, a pickle of something else, a text file, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(f"{path!r} is not a saved model or checkpoint ({reason.rstrip('.')}).") from None
    require(isinstance(payload, dict) and "algorithm" in payload,
            f"{path!r} is not a saved model or checkpoint of som.py or nc_lql.py.")  # fmt: skip
    version = payload.get("format", 1)
    older = f"{path!r} has file format {version}, written by an older version of this code with other network layouts"
    require(version == FILE_FORMAT, f"{older}; this version reads format {FILE_FORMAT}.")
    return payload


def load_checked(path: str, algorithm: str, env_id: Optional[str] = None) -> dict:
    """Load a file written by save_atomic and check it was made by `algorithm` (and for `env_id` when given)."""
    payload = read_saved(path)
    written_by = payload.get("algorithm")
    require(written_by == algorithm, f"{path!r} was written by {written_by or 'something else'}, not by {algorithm}.")
    if env_id is not None:
        saved_env = payload["args"]["env_id"]
        require(saved_env == env_id, f"{path!r} was trained on {saved_env}, not {env_id}.")
    return payload


def load_model(path: str, algorithm: str) -> dict:
    """A model saved with --save-model, or a run's checkpoint.pt, as one dict: the networks' state dicts by name
    ("actor", "critic"), "args", "obs_dim" and "act_dim" (a checkpoint keeps its networks under "modules" and has no
    sizes: they come from its env)."""
    payload = load_checked(path, algorithm)
    if "modules" not in payload:
        return payload
    env = make_env(payload["args"]["env_id"], 0)()
    sizes = {"obs_dim": env.observation_space.shape[0], "act_dim": env.action_space.shape[0]}
    env.close()
    return {**payload, **payload["modules"], **sizes}


# --------------------------------------------------------------------------------------------------------------------
# Long runs: checkpoints, resume, signals, non-finite guard
# --------------------------------------------------------------------------------------------------------------------


class NonFiniteError(RuntimeError):
    """A loss or an action became NaN or inf; `name` says which."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def check_finite(name: str, value) -> None:
    """Raise NonFiniteError(name) if a tensor or array holds NaN/inf. Called on each loss BEFORE its optimiser step
    (so the networks in memory are still the last good ones) and on each batch of actions. One host sync per
    call; acting already syncs once per env step, so on a GPU this costs little."""
    finite = bool(torch.isfinite(value).all()) if isinstance(value, torch.Tensor) else bool(np.isfinite(value).all())
    if not finite:
        raise NonFiniteError(name)


class StopSignal:
    """SIGINT (Ctrl-C) and SIGTERM (Slurm pre-emption, kill) only set `self.name`; the training loop finishes its
    current step, writes a checkpoint, closes the loggers and exits 0."""

    def __init__(self):
        self.name: Optional[str] = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.name = signal.Signals(signum).name


def _rng_state(envs) -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "action_space": envs.action_space.np_random.bit_generator.state,
    }


def _set_rng_state(state: dict, envs) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    envs.action_space.np_random.bit_generator.state = state["action_space"]


BUFFER_FIELDS = ("obs", "next_obs", "actions", "rewards", "terminated")


def save_checkpoint(path: str, algorithm: str, args, modules: dict, optimizers: dict, counters: dict, envs,
                    buffer=None) -> None:  # fmt: skip
    """Everything needed to continue a run exactly: networks, optimisers, RNG streams (python, numpy, torch, the
    vector env's action space), counters and, when `buffer` is given, the replay buffer's filled part."""
    payload = {
        "algorithm": algorithm,
        "args": dict(vars(args)),
        "modules": {name: m.state_dict() for name, m in modules.items()},
        "optimizers": {name: o.state_dict() for name, o in optimizers.items()},
        "counters": dict(counters),
        "rng": _rng_state(envs),
        "buffer": None,
    }
    if buffer is not None:  # the filled rows, oldest first: a resume may give the buffer another capacity
        order = chronological_rows(buffer.size, buffer.pos, buffer.capacity)
        payload["buffer"] = {f: getattr(buffer, f)[order.to(buffer.device)].cpu() for f in BUFFER_FIELDS}
    save_atomic(payload, path)


def chronological_rows(size: int, pos: int, capacity: int) -> torch.Tensor:
    """Indices of a ring buffer's filled rows, oldest first: the newest row is the one just before `pos`."""
    return (pos - size + torch.arange(size)) % capacity


def restore_buffer(buffer, saved: dict) -> None:
    """Put saved rows (oldest first) at the start of `buffer`, so that the next write goes right after the newest and
    `buffer.size` covers only rows that were written. A smaller capacity keeps the newest rows."""
    kept = min(len(saved["obs"]), buffer.capacity)
    for f in BUFFER_FIELDS:
        getattr(buffer, f)[:kept] = saved[f][len(saved[f]) - kept :].to(getattr(buffer, f).device)
    buffer.size, buffer.pos = kept, kept % buffer.capacity


def load_checkpoint(path: str, algorithm: str, env_id: str, modules: dict, optimizers: dict, envs,
                    buffer=None) -> dict:  # fmt: skip
    """Restore what save_checkpoint wrote into the given objects and return the counters."""
    payload = load_checked(path, algorithm, env_id)
    require("counters" in payload, f"{path!r} is a saved model, not a checkpoint; pass runs/<run>/checkpoint.pt.")
    for name, m in modules.items():
        m.load_state_dict(payload["modules"][name])
    for name, o in optimizers.items():
        o.load_state_dict(payload["optimizers"][name])
    _set_rng_state(payload["rng"], envs)
    if buffer is not None and payload["buffer"] is not None:
        restore_buffer(buffer, payload["buffer"])
    return payload["counters"]


def run_dir_for(args) -> str:
    """runs/{env}__{exp_name}__{seed}__{time}, or the checkpoint's own folder when resuming."""
    if args.resume:
        return os.path.dirname(os.path.abspath(args.resume))
    return os.path.join(args.run_dir, run_name_for(args.env_id, args.exp_name, args.seed))


class Run:
    """The plumbing around one training loop, the same for both scripts: resuming from a checkpoint, TensorBoard (and
    wandb) logging, console progress, when to log and evaluate, checkpoints every --checkpoint-frequency transitions
    and on SIGINT / SIGTERM, the stop on NaN / inf with the last good state saved, and the end of the run.

    `counters` (global_step, updates, ...) is the loop's own dict; it is saved in every checkpoint and restored here
    on --resume, together with the modules, optimisers, RNG streams and, with --checkpoint-buffer, the buffer."""

    def __init__(self, algorithm: str, args, run_dir: str, envs, modules: dict, optimizers: dict, buffer,
                 counters: dict):  # fmt: skip
        self.algorithm, self.args, self.run_dir, self.envs = algorithm, args, run_dir, envs
        self.modules, self.optimizers, self.buffer, self.counters = modules, optimizers, buffer, counters
        counters.update(global_step=0, updates=0, next_log=args.log_frequency, next_eval=args.eval_frequency,
                        last_eval=-1, next_checkpoint=args.checkpoint_frequency)  # fmt: skip
        if args.resume:
            counters.update(load_checkpoint(args.resume, algorithm, args.env_id, modules, optimizers, envs, buffer))
            print(f"resumed from {args.resume} at step {counters['global_step']} with {buffer.size} transitions in "
                  "the buffer")  # fmt: skip
        self.logger = Logger(run_dir, args, args.track, args.wandb_project_name, args.wandb_entity,
                             resume_step=counters["global_step"] if args.resume else None)  # fmt: skip
        print(f"run directory: {run_dir}", flush=True)
        self.checkpoint_path = os.path.join(run_dir, "checkpoint.pt")
        self.stop = StopSignal()
        self.progress = Progress(args.total_timesteps, args.learning_starts, start_step=counters["global_step"])

    def write_checkpoint(self, path: str) -> None:
        save_checkpoint(path, self.algorithm, self.args, self.modules, self.optimizers, self.counters, self.envs,
                        self.buffer if self.args.checkpoint_buffer else None)  # fmt: skip

    def log_due(self) -> bool:
        """True every --log-frequency transitions."""
        if self.counters["global_step"] < self.counters["next_log"]:
            return False
        self.counters["next_log"] += self.args.log_frequency
        return True

    def eval_due(self) -> bool:
        """True every --eval-frequency transitions, and once at the end of the run."""
        step, counters = self.counters["global_step"], self.counters
        if step < counters["next_eval"] and not (step >= self.args.total_timesteps and counters["last_eval"] < step):
            return False
        counters["next_eval"], counters["last_eval"] = counters["next_eval"] + self.args.eval_frequency, step
        return True

    def checkpoint_and_stop(self) -> bool:
        """Write the checkpoint when one is due or a signal came; True (stop the loop) after a signal."""
        step = self.counters["global_step"]
        if step >= self.counters["next_checkpoint"]:
            self.counters["next_checkpoint"] += self.args.checkpoint_frequency
            self.write_checkpoint(self.checkpoint_path)
        if self.stop.name is None:
            return False
        self.write_checkpoint(self.checkpoint_path)
        self.progress.write(f"{self.stop.name} received: stopped at step {step}, checkpoint written to "
                            f"{self.checkpoint_path} (continue with --resume {self.checkpoint_path})")  # fmt: skip
        return True

    @contextlib.contextmanager
    def stop_on_non_finite(self):
        """Around the loop: a NaN / inf (NonFiniteError, raised before any optimiser step or env step uses it) saves
        last_good_checkpoint.pt and exits with status 1 and one sentence."""
        try:
            yield
        except NonFiniteError as err:
            self.progress.close()
            last_good = os.path.join(self.run_dir, "last_good_checkpoint.pt")
            self.write_checkpoint(last_good)
            value, at = self.logger.last_values.get(err.name, (None, None))
            last = f"its last logged finite value was {value:.6g} at step {at}" if value is not None else "never logged"
            self.envs.close()
            self.logger.close()
            raise SystemExit(f"error: {err.name} became NaN or inf at step {self.counters['global_step']} ({last}); "
                             f"the last good state is saved in {last_good}.") from None  # fmt: skip

    def finish(self, model: dict) -> None:
        """End of the loop: with --save-model write `model` (the networks' state dicts, sizes) to
        runs/<run>/<exp_name>.pt; report the compiled graphs; close the envs and the loggers."""
        self.progress.close()
        if self.args.save_model:
            path = os.path.join(self.run_dir, f"{self.args.exp_name}.pt")
            save_atomic({"algorithm": self.algorithm, "args": dataclasses.asdict(self.args), **model}, path)
            print(f"model saved to {path}", flush=True)
        if self.args.compile:
            print(f"torch.compile built {compiled_graph_count()} graphs in this run", flush=True)
        self.envs.close()
        self.logger.close()


# What --resume may change; any other flag given with --resume must agree with the checkpoint.
RESUME_MAY_CHANGE = (
    "resume", "total_timesteps", "cuda", "compile", "track", "wandb_project_name", "wandb_entity", "save_model",
    "checkpoint_frequency", "checkpoint_buffer", "eval_frequency", "eval_episodes", "log_frequency",
)  # fmt: skip


def resume_args(args, path: str, algorithm: str, cli: Optional[list[str]] = None):
    """`--resume PATH` alone continues the run: every argument comes from the checkpoint. The command line `cli`
    (default: sys.argv[1:]) is parsed again with the checkpoint's arguments as the defaults, so a flag given
    explicitly overrides them; only the flags in RESUME_MAY_CHANGE may differ, any other that contradicts the
    checkpoint (another --env-id, --gamma, ...) is refused in one sentence."""
    import tyro

    payload = load_checked(path, algorithm)
    require("counters" in payload, f"{path!r} is a saved model, not a checkpoint; pass runs/<run>/checkpoint.pt.")
    fields = [f.name for f in dataclasses.fields(args)]
    saved = type(args)(**{k: v for k, v in payload["args"].items() if k in fields})  # fields added since: defaults
    merged = tyro.cli(type(args), args=sys.argv[1:] if cli is None else cli, default=saved)
    for name in fields:
        given, kept = getattr(merged, name), getattr(saved, name)
        if name in RESUME_MAY_CHANGE or given == kept:
            continue
        if name == "env_id":
            raise UserInputError(f"{path!r} was trained on {kept}, not {given}; leave out --env-id to continue it.")
        may = ", ".join(_flag(n) for n in RESUME_MAY_CHANGE if n in fields and n != "resume")
        raise UserInputError(f"{_flag(name)} {given} contradicts {path!r}, which was trained with {kept}; "
                             f"leave it out (on --resume only {may} may change).")  # fmt: skip
    return merged
