"""The live hook: a promoted policy steering a real training loop (``LiveManager``), the Hugging Face ``Trainer``
callback (``TMSimCallback``, in ``tmsim.live.hf``, imported on first use so tmsim works without transformers), and
sim-vs-live fidelity (``tmsim.live.fidelity``)."""
from .manager import LiveManager, NotPromotedError

__all__ = ["LiveManager", "NotPromotedError", "TMSimCallback"]


def __getattr__(name: str):
    if name == "TMSimCallback":
        from .hf import TMSimCallback

        return TMSimCallback
    raise AttributeError(f"module 'tmsim.live' has no attribute {name!r}")
