"""Stable-Baselines3's SAC under this project's protocol: the baseline that SOM and NC-LQL are compared with.

SAC itself is Stable-Baselines3's, with its defaults (two 256-unit layers, automatic entropy tuning, tau 0.005,
gamma 0.99, one gradient step per env step). What is ours is only what makes the runs comparable: the environment is
built as the scripts build it (common.make_env: actions rescaled to [-1, 1], raw episode returns recorded), the
warm-up is `--learning-starts` uniform random steps, and every `--eval-frequency` steps `--eval-episodes` episodes
are played as one batch by common.evaluate with SAC's mean action, on the same evaluation seeds as the scripts. The
TensorBoard tags are the scripts' (`eval/episodic_return`, `eval/episodic_return_std`, `charts/episodic_return`,
`charts/episodic_length`, `charts/SPS`) under runs/, so `python scripts/figures.py curves runs/...` draws all of
them on one figure.

    pip install -r requirements-bench.txt
    python scripts/sac_baseline.py --env-id HalfCheetah-v4 --seed 1 --total-timesteps 30000
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402


@dataclass
class Args:
    env_id: str = "HalfCheetah-v4"
    """the gymnasium id of a continuous-action environment"""
    seed: int = 1
    """seed of SAC, its environment and the evaluation episodes"""
    total_timesteps: int = 30_000
    """environment steps in total"""
    learning_starts: int = 5_000
    """uniform random steps before learning starts"""
    batch_size: int = 256
    """replay batch size"""
    learning_rate: float = 3e-4
    """Adam learning rate of actor, critics and entropy coefficient"""
    eval_frequency: int = 2_500
    """evaluate every this many environment steps"""
    eval_episodes: int = 5
    """episodes per evaluation (stepped as one batch), SAC's mean action"""
    exp_name: str = "sac_sb3"
    """the name of this experiment (part of the run directory's name)"""
    run_dir: str = "runs"
    """parent folder of the run directories"""


def main(argv: list[str] | None = None) -> None:
    import tyro

    args = tyro.cli(Args, args=argv)
    common.check_positive(args, ["total_timesteps", "learning_starts", "batch_size", "learning_rate",
                                 "eval_frequency", "eval_episodes"])  # fmt: skip
    common.validate_env_id(args.env_id)
    try:
        from stable_baselines3 import SAC
        from stable_baselines3.common.callbacks import BaseCallback
        from stable_baselines3.common.vec_env import DummyVecEnv
    except ImportError:
        raise common.UserInputError(
            "the SAC baseline needs Stable-Baselines3: pip install -r requirements-bench.txt."
        ) from None

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    run_dir = os.path.join(args.run_dir, common.run_name_for(args.env_id, args.exp_name, args.seed))
    logger = common.Logger(run_dir, args)
    print(f"run directory: {run_dir}", flush=True)
    env = DummyVecEnv([common.make_env(args.env_id, args.seed)])
    model = SAC("MlpPolicy", env, learning_rate=args.learning_rate, batch_size=args.batch_size,
                learning_starts=args.learning_starts, seed=args.seed, device="cpu", verbose=0)  # fmt: skip

    def mean_action(obs: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(model.predict(obs.numpy(), deterministic=True)[0])

    class EvaluateAndLog(BaseCallback):
        """Training episodes as the scripts log them; an evaluation every --eval-frequency steps and at the end."""

        def _on_training_start(self) -> None:
            self.next_eval, self.start = args.eval_frequency, time.monotonic()

        def _on_step(self) -> bool:
            step = self.num_timesteps
            for info in self.locals["infos"]:
                if "episode" in info:  # gymnasium's RecordEpisodeStatistics, inside common.make_env
                    logger.scalars({"charts/episodic_return": float(info["episode"]["r"]),
                                    "charts/episodic_length": int(info["episode"]["l"])}, step)  # fmt: skip
            if step >= self.next_eval or step >= args.total_timesteps:
                self.next_eval += args.eval_frequency
                returns, _ = common.evaluate(mean_action, args.env_id, args.eval_episodes,
                                             args.seed + 1_000_000 + step, "cpu")  # fmt: skip
                sps = step / (time.monotonic() - self.start)
                logger.scalars({"eval/episodic_return": returns.mean(), "eval/episodic_return_std": returns.std(),
                                "charts/SPS": sps}, step)  # fmt: skip
                print(f"eval at {step}: {returns.mean():.1f} +- {returns.std():.1f} ({sps:.1f} steps/s)", flush=True)
            return True

    model.learn(total_timesteps=args.total_timesteps, callback=EvaluateAndLog())
    env.close()
    logger.close()


if __name__ == "__main__":
    main()
