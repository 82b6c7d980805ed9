"""Environments that exercise the scripts' error paths; used as `--env-id odd_envs:NanReward-v0` etc."""

import gymnasium as gym
import numpy as np


class NanRewardEnv(gym.Env):
    """Pendulum-sized toy whose reward turns NaN from its 150th step on (counted over all episodes)."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

    def step(self, action):
        self.steps += 1
        reward = float("nan") if self.steps >= 150 else -float(np.square(action).sum())
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), reward, False, False, {}


class UnboundedActionEnv(NanRewardEnv):
    def __init__(self):
        super().__init__()
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)


gym.register("NanReward-v0", entry_point=NanRewardEnv, max_episode_steps=50)
gym.register("UnboundedAction-v0", entry_point=UnboundedActionEnv, max_episode_steps=50)


class NanAfterResetEnv(NanRewardEnv):
    """Finite rewards and observations, except that every reset from the 10th on returns a NaN observation: a policy
    acting on it returns NaN actions. Episodes last 20 steps (the time limit)."""

    def __init__(self):
        super().__init__()
        self.resets = 0

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed, options=options)
        self.resets += 1
        return (np.full(3, np.nan, np.float32) if self.resets >= 10 else obs), info

    def step(self, action):
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), -float(np.square(action).sum()), False, False, {}


gym.register("NanAfterReset-v0", entry_point=NanAfterResetEnv, max_episode_steps=20)
