"""Videos: the offscreen OpenGL backend choice, --capture-video during training, scripts/evaluate.py --video after."""

import glob
import os
import re
import subprocess
import sys

import pytest
from helpers import ROOT, run_script, script_env

import common
from scripts import bandit

# A Hopper-v4 run of seconds: random actions for 200 transitions, then 100 with tiny networks and a short sampler.
TINY_HOPPER = ["--env-id", "Hopper-v4", "--num-envs", "1", "--learning-starts", "200", "--total-timesteps", "300",
               "--batch-size", "64", "--hidden-dim", "32", "--eval-frequency", "300", "--eval-episodes", "1",
               "--num-levels", "2", "--steps-per-level", "1", "--save-model", "--capture-video"]  # fmt: skip


def decoded_frames(path: str) -> tuple[int, tuple[int, int]]:
    """Decode the whole video with the ffmpeg that imageio-ffmpeg ships; return (frame count, (width, height))."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(path)
    meta = next(reader)
    return sum(1 for _ in reader), tuple(meta["size"])


# -------------------------------------------------------------------------------------------------- backend choice
def test_offscreen_backend_is_egl_else_osmesa_and_only_without_a_screen(monkeypatch):
    tried = []
    monkeypatch.setattr(common, "_gl_backend_works", lambda backend: tried.append(backend) or backend == "osmesa")
    monkeypatch.setattr(sys, "platform", "linux")
    for name in ("MUJOCO_GL", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.setenv(name, "")  # so that monkeypatch restores each one, also what pick_offscreen_gl sets
        monkeypatch.delenv(name)
    assert common.pick_offscreen_gl() == "osmesa" and os.environ["MUJOCO_GL"] == "osmesa"
    assert tried == ["egl", "osmesa"]

    tried.clear()
    monkeypatch.setenv("MUJOCO_GL", "egl")  # the user's choice is kept, nothing is tried
    assert common.pick_offscreen_gl() == "egl" and tried == []

    monkeypatch.delenv("MUJOCO_GL")
    monkeypatch.setenv("DISPLAY", ":0")  # a screen: MuJoCo's default (GLFW) is left alone
    assert common.pick_offscreen_gl() is None and tried == [] and "MUJOCO_GL" not in os.environ

    monkeypatch.delenv("DISPLAY")
    monkeypatch.setattr(common, "_gl_backend_works", lambda backend: False)
    assert common.pick_offscreen_gl() is None and "MUJOCO_GL" not in os.environ


def test_the_backend_probe_accepts_what_this_machine_renders_with():
    # MUJOCO_GL=egl gives MuJoCo frames on a CPU-only machine through Mesa; .ci/run installs it where missing.
    assert common._gl_backend_works("egl")
    assert not common._gl_backend_works("no-such-backend")


def test_an_env_that_cannot_render_stops_with_one_sentence(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        common.make_video_env(bandit.ENV_ID, str(tmp_path / "videos"))
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: could not render scripts.bandit:MultimodalBandit-v0")


# -------------------------------------------------------------------------------------------------- real videos
@pytest.fixture(scope="module")
def hopper_run(tmp_path_factory):
    """One short NC-LQL Hopper-v4 run with --capture-video --save-model; returns its run directory."""
    runs = str(tmp_path_factory.mktemp("video_runs") / "runs")
    proc = run_script("nc_lql.py", *TINY_HOPPER, "--run-dir", runs)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run_dir,) = glob.glob(os.path.join(runs, "*"))
    return run_dir


def test_capture_video_writes_the_first_training_episodes_into_the_run_folder(hopper_run):
    videos = sorted(glob.glob(os.path.join(hopper_run, "videos", "*.mp4")))
    names = [os.path.basename(v) for v in videos]
    # gymnasium's default schedule records episodes 0, 1, 8, 27, ...: a short run still has the first ones
    assert {"rl-video-episode-0.mp4", "rl-video-episode-1.mp4"} <= set(names), names
    for video in videos:
        assert os.path.getsize(video) > 0
        frames, size = decoded_frames(video)
        assert frames >= 2 and size == (480, 480), (video, frames, size)


def test_evaluate_records_a_playable_hopper_video_from_the_saved_model(hopper_run, tmp_path):
    (model,) = glob.glob(os.path.join(hopper_run, "nc_lql.pt"))
    folder = str(tmp_path / "videos")
    env = dict(script_env())
    env.pop("MUJOCO_GL", None)  # the script must pick an offscreen backend itself
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"), model, "--episodes", "1",
                           "--video", folder], capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    match = re.search(r"video (\S+\.mp4): return \S+, length (\d+)", proc.stdout)
    assert match, proc.stdout
    path, length = match.group(1), int(match.group(2))
    assert path == os.path.join(folder, "Hopper-v4-episode-0.mp4") and os.path.getsize(path) > 0
    frames, size = decoded_frames(path)
    assert frames == length + 1 and size == (480, 480)  # the reset frame, then one per step
