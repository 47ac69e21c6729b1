"""A policy kind defined outside tmsim (registered by the tests through an entry point or ``register_kind``)."""
from tmsim.core import Proposal


class AlwaysHalve:
    """Halve the learning rate at every decision."""

    def __init__(self, reason: str = "always"):
        self.reason = reason
        self.policy_id, self.version = "always-halve", "1"

    def decide(self, snapshot):
        return Proposal(action="lr_down", reason=self.reason)
