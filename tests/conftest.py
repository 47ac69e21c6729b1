import random
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def small_library(tmp_path_factory):
    """A real, small library: digits-mlp overfit + healthy, seeds 0-1, depth 2 (recorded once per session)."""
    from tmsim.record import record, specs_from_args

    out = tmp_path_factory.mktemp("lib")
    specs = specs_from_args(["digits-mlp"], ["overfit", "healthy"], [0, 1], depth=2, decide_every=None, budget=None)
    record(specs, out, workers=1, show_progress=False)
    return out


@pytest.fixture(scope="session")
def bundled():
    return REPO / "traces"


@pytest.fixture(scope="session")
def deep_library(tmp_path_factory):
    """Full depth-3 digits-mlp plateau trees, seeds 0-1: every pool policy's path is recorded (for fidelity)."""
    from tmsim.record import record, specs_from_args

    out = tmp_path_factory.mktemp("deep")
    record(specs_from_args(["digits-mlp"], ["plateau"], [0, 1], depth=3, decide_every=None, budget=None), out,
           workers=2, show_progress=False)
    return out
