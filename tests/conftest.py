import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """MuJoCo writes MUJOCO_LOG.TXT and the scripts write runs/ into the working dir: keep them out of the repo."""
    monkeypatch.chdir(tmp_path)
