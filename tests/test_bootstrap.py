"""Bootstrapped learning against a known answer: each script's own update functions, trained on a three-state cycle
with continuous actions and gamma < 1, must bring its critic to Q* at the states and at its policy's actions.

The MDP. States 0, 1, 2 (one-hot observations) follow each other in a cycle whatever the action, a in [-1, 1]:
    r(s, a) = b_s - (a - c_s)^2 / 2,   s' = s + 1 (mod 3),   never terminal,
so Q*(s, a) = r(s, a) + gamma V*(s + 1) with V* = (I - gamma P)^-1 b (P the cycle), greedy action c_s. With
b = (1, 0, -0.5) and gamma = 0.8, V* = (1.393, 0.492, 0.615): every state's value comes mostly from the states after
it, so a critic that ignores gamma (Q = r), bootstraps on the current state instead of the next, or never moves its
target critics off their initialisation is wrong by 0.4 to 1.1, while the correct updates land within 0.03.
The replay buffer holds 3,000 uniformly random transitions; no environment is stepped.
"""

import pytest
import torch

import common
import nc_lql
import som

GAMMA = 0.8
B = torch.tensor([1.0, 0.0, -0.5])
C = torch.tensor([0.5, -0.5, 0.0])
NUM_STATES = 3
TOLERANCE = 0.1  # on Q; the breakages above miss by at least 0.4


def reward(s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return B[s] - 0.5 * (a[:, 0] - C[s]) ** 2


def v_star() -> torch.Tensor:
    cycle = torch.roll(torch.eye(NUM_STATES), 1, dims=1)  # P[s, s + 1] = 1
    return torch.linalg.solve(torch.eye(NUM_STATES) - GAMMA * cycle, B)


def q_star(s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return reward(s, a) + GAMMA * v_star()[(s + 1) % NUM_STATES]


def test_v_star_solves_the_bellman_optimality_equation():
    v = v_star()
    torch.testing.assert_close(v, B + GAMMA * v.roll(-1))  # max_a r(s, a) = b_s at a = c_s
    torch.testing.assert_close(v, torch.tensor([1.3934, 0.4918, 0.6148]), atol=1e-4, rtol=0)


def filled_buffer(buffer_cls, size: int = 3000):
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, NUM_STATES, (size,), generator=g)
    a = torch.rand(size, 1, generator=g) * 2 - 1
    onehot = torch.eye(NUM_STATES)
    rb = buffer_cls(size, NUM_STATES, 1, torch.device("cpu"))
    rb.add(onehot[s].numpy(), onehot[(s + 1) % NUM_STATES].numpy(), a.numpy(), reward(s, a).numpy(), torch.zeros(size))
    return rb


def assert_critic_near_q_star(q_fn, policy) -> None:
    """min(Q1, Q2) against Q* on a grid of 21 actions per state, and at the policy's action in each state against V*
    (the policy is near-greedy: Q* at its action is within the tolerance of the maximum)."""
    obs = torch.eye(NUM_STATES)
    s = torch.arange(NUM_STATES).repeat_interleave(21)
    a = torch.linspace(-1, 1, 21).repeat(NUM_STATES).unsqueeze(-1)
    with torch.no_grad():
        grid_error = (q_fn(obs[s], a).min(0).values - q_star(s, a)).abs().max().item()
        chosen = policy(obs)
        at_policy = q_fn(obs, chosen).min(0).values
    assert grid_error < TOLERANCE, f"max |Q - Q*| on the action grid {grid_error:.3f}"
    torch.testing.assert_close(at_policy, v_star(), atol=TOLERANCE, rtol=0)


def test_som_critic_learns_q_star_by_bootstrapping():
    torch.manual_seed(0)
    args = som.Args(hidden_dim=64, num_hidden=2, num_mc_samples=16, num_candidates=8, num_target_candidates=8,
                    gamma=GAMMA, reward_scale=1.0, tau=0.05, critic_lr=3e-3, actor_lr=1e-3, batch_size=128)  # fmt: skip
    actor, critic = som.build_networks(args, NUM_STATES, 1, "cpu")
    critic_target = som.build_networks(args, NUM_STATES, 1, "cpu")[1]
    critic_target.load_state_dict(critic.state_dict())
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.actor_lr)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.critic_lr)
    rb = filled_buffer(som.ReplayBuffer)
    for _ in range(1000):
        batch = rb.sample(args.batch_size)
        som.critic_update(args, batch, actor, critic, critic_target, critic_optimizer)
        som.actor_update(args, batch, actor, critic, actor_optimizer)
        common.polyak_update(critic_target, critic, args.tau)
    assert_critic_near_q_star(critic, lambda obs: som.sample_actions(actor, critic, obs, args.num_candidates))


@pytest.mark.parametrize("lql", [False, True], ids=["nc_lql", "lql"])
def test_nc_lql_critic_learns_q_star_by_bootstrapping(lql):
    """The release's sampler with one Langevin step per level (10 steps instead of 20: half the test's time)."""
    torch.manual_seed(0)
    args = nc_lql.Args(hidden_dim=64, num_hidden=2, steps_per_level=1, gamma=GAMMA, reward_scale=1.0, tau=0.05,
                       critic_lr=3e-3, batch_size=128, lql=lql, num_levels=1 if lql else 10, lql_steps=10)  # fmt: skip
    critic = nc_lql.NoiseConditionedTwinCritic(NUM_STATES, 1, args.hidden_dim, args.num_hidden)
    critic_target = nc_lql.NoiseConditionedTwinCritic(NUM_STATES, 1, args.hidden_dim, args.num_hidden)
    critic_target.load_state_dict(critic.state_dict())
    optimizer = torch.optim.Adam(critic.parameters(), lr=args.critic_lr)
    sigmas = torch.tensor(nc_lql.noise_schedule(args.num_levels, args.sigma_max, args.sigma_min))
    rb = filled_buffer(nc_lql.ReplayBuffer)
    for _ in range(1000):
        nc_lql.critic_update(args, rb.sample(args.batch_size), critic, critic_target, optimizer, sigmas, 1)
        common.polyak_update(critic_target, critic, args.tau)
    clean = args.num_levels - 1
    assert_critic_near_q_star(lambda obs, a: critic(obs, a, clean),
                              lambda obs: nc_lql.sample_actions(critic, obs, args, 1))  # fmt: skip
