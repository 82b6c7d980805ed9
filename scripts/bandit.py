"""One-step bandits with reward modes of different heights, the small tasks on which the tests and the bandit probe
check where a policy puts its actions: MultimodalBandit-v0 (two modes) and ThreeModeBandit-v0 (three modes of close
heights, the best one the hardest to find). Importing this module registers both, so the scripts take them as
`--env-id scripts.bandit:MultimodalBandit-v0` (gymnasium imports the module named before the colon)."""

import gymnasium as gym
import numpy as np


class MultimodalBandit(gym.Env):
    """One step, a constant observation, actions in [-1, 1]^2, reward(a) = sum_m h_m exp(-|a - c_m|^2 / (2 0.15^2))
    with modes c = (0.5, 0.5), (-0.5, -0.5) of heights h = 1.0, 0.6; a uniform action earns about 0.06."""

    MODES, HEIGHTS, WIDTH = np.array([[0.5, 0.5], [-0.5, -0.5]]), np.array([1.0, 0.6]), 0.15
    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

    @classmethod
    def reward(cls, action: np.ndarray) -> np.ndarray:
        sq_dist = ((np.asarray(action, dtype=np.float64)[..., None, :] - cls.MODES) ** 2).sum(-1)
        return (cls.HEIGHTS * np.exp(-sq_dist / (2 * cls.WIDTH**2))).sum(-1)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        return np.zeros(1, dtype=np.float32), float(self.reward(np.clip(action, -1.0, 1.0))), True, False, {}


class ThreeModeBandit(MultimodalBandit):
    """As MultimodalBandit, with modes c = (0.5, 0.5), (-0.5, 0.5), (-0.5, -0.5) of heights h = 1.0, 0.75, 0.5; a
    uniform action earns about 0.08."""

    MODES, HEIGHTS = np.array([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5]]), np.array([1.0, 0.75, 0.5])


ENV_ID, THREE_MODE_ENV_ID = "scripts.bandit:MultimodalBandit-v0", "scripts.bandit:ThreeModeBandit-v0"
for _name, _env in (("MultimodalBandit-v0", MultimodalBandit), ("ThreeModeBandit-v0", ThreeModeBandit)):
    if _name not in gym.registry:
        gym.register(_name, entry_point=_env, max_episode_steps=1)
