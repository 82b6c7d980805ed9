"""The GPU path (scripts/gpu_check.sh runs these with `pytest -m cuda`): on the device GPU_CHECK_DEVICE (default
cuda), compiled equals eager for both scripts' updates and samplers, as tests/test_compile.py checks on the CPU, and a
checkpoint written on the device resumes on the CPU and back. Without CUDA they skip; GPU_CHECK_DEVICE=cpu runs them
on the CPU (the CPU variant of the GPU check)."""

import copy
import glob
import os

import pytest
import torch
from helpers import run_script
from test_compile import SCRIPT_TINY, TINY, _batch, _som_update, _updated, assert_infos_close, assert_params_close

import common
import nc_lql
import som

DEVICE = torch.device(os.environ.get("GPU_CHECK_DEVICE", "cuda"))
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="no CUDA device is visible"),
]


@pytest.fixture(autouse=True)
def same_randomness():
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fallback_random=True):
        yield


def _on_device(batch):
    return tuple(x.to(DEVICE) for x in batch)


def test_som_update_and_sampler_compiled_equal_eager_on_the_device():
    torch.manual_seed(0)
    args = som.Args(hidden_dim=64, num_hidden=2, num_mc_samples=16, num_candidates=4, num_target_candidates=4)
    actor, critic = som.build_networks(args, 5, 3, DEVICE)
    target, batch = copy.deepcopy(critic), _on_device(_batch(5, 3))
    results = []
    for hot in (som.hot_paths(), som.hot_paths(compile=True, device=DEVICE)):
        a, c, t = copy.deepcopy(actor), copy.deepcopy(critic), copy.deepcopy(target)
        a_opt, c_opt = torch.optim.SGD(a.parameters(), lr=0.05), torch.optim.SGD(c.parameters(), lr=0.05)
        info = _updated(_som_update, args, batch, a, c, t, a_opt, c_opt, hot)
        torch.manual_seed(1)
        with torch.no_grad():
            actions = hot.sample_actions(a, c, batch[0], 8)
        results.append((a, c, info, actions))
    (a_eager, c_eager, eager_info, eager_act), (a_fast, c_fast, fast_info, fast_act) = results
    assert_params_close(c_fast, c_eager)
    assert_params_close(a_fast, a_eager)
    assert_infos_close(fast_info, eager_info)
    torch.testing.assert_close(fast_act, eager_act, atol=1e-4, rtol=1e-4)


def test_nc_lql_update_and_sampler_compiled_equal_eager_on_the_device():
    torch.manual_seed(0)
    args = nc_lql.Args(num_levels=3, steps_per_level=1, batch_size=32, num_chains=3)
    critic = nc_lql.NoiseConditionedTwinCritic(5, 3, 64, 2).to(DEVICE)
    target = copy.deepcopy(critic)
    sigmas = torch.tensor(nc_lql.noise_schedule(3, args.sigma_max, args.sigma_min), device=DEVICE)
    batch, noise = _on_device(_batch(5, 3)), nc_lql.langevin_noise(3, 32, 3, 3, DEVICE)
    results = []
    for hot in (nc_lql.hot_paths(), nc_lql.hot_paths(compile=True, device=DEVICE)):
        c, t = copy.deepcopy(critic), copy.deepcopy(target)
        opt = torch.optim.SGD(c.parameters(), lr=0.05)
        info = _updated(nc_lql.critic_update, args, batch, c, t, opt, sigmas, 3, hot)
        with torch.no_grad():
            results.append((c, info, hot.sample_actions(c, batch[0], args, 3, noise)))
    (eager, eager_info, eager_act), (fast, fast_info, fast_act) = results
    assert_params_close(fast, eager)
    assert_infos_close(fast_info, eager_info)
    torch.testing.assert_close(fast_act, eager_act, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("script", ["som.py", "nc_lql.py"])
def test_a_checkpoint_written_on_the_device_resumes_on_the_cpu_and_back(script, tmp_path):
    flag = "--cuda" if DEVICE.type == "cuda" else "--no-cuda"
    tiny = [x for x in TINY if x != "--no-cuda"] + SCRIPT_TINY[script]
    first = run_script(script, *tiny, flag, "--total-timesteps", "200", "--run-dir", str(tmp_path))
    assert first.returncode == 0, first.stderr[-2000:]
    (checkpoint,) = glob.glob(str(tmp_path / "*" / "checkpoint.pt"))
    for total, device_flag in ((300, "--no-cuda"), (400, flag)):
        resumed = run_script(script, "--resume", checkpoint, "--total-timesteps", str(total), device_flag)
        assert resumed.returncode == 0 and f"resumed from {checkpoint} at step {total - 100}" in resumed.stdout, (
            resumed.stderr[-2000:]
        )
    assert common.read_saved(checkpoint, script[:-3], checkpoint=True)["counters"]["global_step"] == 400
