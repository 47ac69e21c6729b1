"""A policy kind defined outside tmsim (registered by the tests through an entry point or ``register_kind``)."""
from tmsim.core import Proposal


class AlwaysHalve:
    """Halve the learning rate at every decision."""

    def __init__(self, reason: str = "always"):
        self.reason = reason
        self.policy_id, self.version = "always-halve", "1"

    def decide(self, snapshot):
        return Proposal(action="lr_down", reason=self.reason)


class RunIdReader:
    """Says in its reason what it can learn of the run it is deciding for: its run id."""

    def __init__(self):
        self.policy_id, self.version = "run-id-reader", "1"

    def decide(self, snapshot):
        return Proposal(action="continue", reason=f"run_id={snapshot.run_id}")
