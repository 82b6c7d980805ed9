"""Relative error of SOM's two score estimators against the exact score of a Gaussian Boltzmann policy.

Q(s, a) = -|a - c|^2 / 2 makes exp(Q / alpha) the Gaussian N(c, alpha I), whose VP-noised marginal is
N(mu c, (mu^2 alpha + sigma^2) I) with a known score. K = 20,000 proposals, 64 noised actions per time.

    python scripts/score_error.py
"""

import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import som  # noqa: E402


def relative_error(estimator: str, alpha: float, t_value: float, num_samples: int = 20_000) -> tuple[float, float]:
    torch.manual_seed(0)
    batch, center = 64, torch.tensor([0.2, -0.1])
    t = torch.full((batch, 1), t_value)
    mu, sigma = som.vp_mu_sigma(t, 0.1, 20.0)
    noised = mu * (center + math.sqrt(alpha) * torch.randn(batch, 2)) + sigma * torch.randn(batch, 2)

    def q_fn(obs, actions):
        return -0.5 * ((actions - center) ** 2).sum(-1)

    score, info = som.score_estimate(q_fn, torch.zeros(batch, 1), noised, t, num_samples, alpha, 0.1, 20.0,
                                     estimator=estimator, q_norm="none")  # fmt: skip
    exact = -(noised - mu * center) / (mu**2 * alpha + sigma**2)
    err = (score - exact).norm(dim=-1).mean() / exact.norm(dim=-1).mean()
    return err.item(), float(info["softmax_ess"])


if __name__ == "__main__":
    print("| estimator | alpha | " + " | ".join(f"t = {t}" for t in (0.05, 0.3, 0.5, 0.7, 1.0)) + " |")
    print("|---|---:|" + "---:|" * 5)
    # alpha = 0.01 keeps the Gaussian 7 std inside the box, where the tweedie form's box-supported target lives
    for estimator, alpha in (("idem", 0.25), ("tweedie", 0.01)):
        cells = [f"{100 * relative_error(estimator, alpha, t)[0]:.2f}%" for t in (0.05, 0.3, 0.5, 0.7, 1.0)]
        print(f"| {estimator} | {alpha} | " + " | ".join(cells) + " |")
