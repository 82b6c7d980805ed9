"""Evaluate a model saved with --save-model or a checkpoint.pt (som.py or nc_lql.py); optionally record videos.

python scripts/evaluate.py runs/Hopper-v4__som__1__1700000000/som.pt --episodes 10
python scripts/evaluate.py runs/.../som.pt --num-candidates 1          # SOM's one-step policy alone
python scripts/evaluate.py runs/.../checkpoint.pt --num-candidates 1 --flow-steps 20   # SOM: 20 flow steps instead
python scripts/evaluate.py runs/.../nc_lql.pt --episodes 3 --video videos/   # videos/<env>-episode-K.mp4

Without a screen MuJoCo renders offscreen: MUJOCO_GL is set to egl (else osmesa) when unset (common.make_video_env).
"""

from __future__ import annotations

import argparse
import os
import sys

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # noqa: E402


def load_any(path: str, num_candidates: int | None, flow_steps: int | None):
    """(policy, args) of a som.py or nc_lql.py file; SOM's options are refused for an NC-LQL file."""
    algorithm = common.read_saved(path).get("algorithm")
    if algorithm == "som":
        import som

        return som.load_policy(path, num_candidates=num_candidates, flow_steps=flow_steps or 1)
    common.require(algorithm == "nc_lql", f"{path!r} was not written by som.py or nc_lql.py.")
    given = [flag for flag, value in (("--num-candidates", num_candidates), ("--flow-steps", flow_steps)) if value]
    verb = "apply" if len(given) > 1 else "applies"
    common.require(not given, f"{' and '.join(given)} {verb} to SOM models only; {path!r} is an NC-LQL model.")
    import nc_lql

    return nc_lql.load_policy(path)


def record_videos(policy, env_id: str, episodes: int, folder: str, seed: int) -> list[tuple[str, float, int]]:
    """Play `episodes` episodes (seeds seed, seed + 1, ...) and write each to `folder`/<env>-episode-K.mp4.
    Returns (path, return, length) per episode; the video of an episode of length L has L + 1 frames."""
    prefix = env_id.replace(":", "_").replace("/", "_")
    env = common.make_video_env(env_id, folder, episode_trigger=lambda _: True, name_prefix=prefix)
    unit = np.ones(env.action_space.shape, dtype=np.float32)
    env = gym.wrappers.RescaleAction(env, -unit, unit)
    results = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, length, done = 0.0, 0, False
        while not done:
            with torch.no_grad():
                action = policy(torch.as_tensor(obs, dtype=torch.float32)[None])[0].numpy()
            obs, reward, terminated, truncated, _ = env.step(action)
            total, length, done = total + float(reward), length + 1, terminated or truncated
        results.append((os.path.join(folder, f"{prefix}-episode-{episode}.mp4"), total, length))
    env.close()  # writes the last episode's video
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--num-candidates", type=int, default=None, help="SOM only: N (default: the training run's)")
    p.add_argument("--flow-steps", type=int, default=None, help="SOM only: MeanFlow steps per candidate (default 1)")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--video", default=None, metavar="FOLDER", help="also record the episodes to this folder")
    cli = p.parse_args()
    common.require(cli.episodes > 0, f"--episodes must be positive, got {cli.episodes}.")
    for flag, value in (("--num-candidates", cli.num_candidates), ("--flow-steps", cli.flow_steps)):
        common.require(value is None or value > 0, f"{flag} must be positive, got {value}.")
    policy, args = load_any(cli.model, cli.num_candidates, cli.flow_steps)
    returns, lengths = common.evaluate(policy, args.env_id, cli.episodes, cli.seed, "cpu")
    print(f"{args.env_id}: return {returns.mean():.2f} +- {returns.std():.2f} over {cli.episodes} episodes "
          f"(length {lengths.mean():.0f})")  # fmt: skip
    if cli.video:
        for path, total, length in record_videos(policy, args.env_id, cli.episodes, cli.video, cli.seed):
            print(f"video {path}: return {total:.2f}, length {length}")


if __name__ == "__main__":
    main()
