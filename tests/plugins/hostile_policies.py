"""Policies that try to break the harness (loaded by the hostile-input tests as ``hostile_policies:Name``)."""
import os
import sys
import threading
import time

from tmsim.core import Proposal


class Hostile:
    """One hostile behaviour per ``how``."""

    def __init__(self, how: str = "continue"):
        self.how = how
        self.policy_id, self.version = f"hostile-{how}", "1"

    def decide(self, s):
        how = self.how
        if how == "sys_exit":
            sys.exit(0)
        if how == "os_exit":
            os._exit(0)
        if how == "keyboard_interrupt":
            raise KeyboardInterrupt
        if how == "hang":
            time.sleep(3600)
        if how == "mutate":
            object.__setattr__(s.hparams, "lr", 10.0)
            object.__setattr__(s, "offered", ("continue", "set_lr"))
            return Proposal(action="set_lr", value=10.0)
        if how == "thread":
            threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()
            return "continue"
        if how == "memory":
            blob = bytearray(64 * 1024**3)  # far above the policy process's limit
            return str(len(blob))
        if how == "huge_reason":
            return Proposal(action="lr_down", reason="x" * 20_000_000)
        if how == "slow_repr":
            return SlowRepr()
        if how == "raising_get":
            return RaisingDict(action="lr_down")
        if how == "unvalidated":
            return Proposal.model_construct(action="set_lr", value=object())
        return "continue"


class SlowRepr:
    def __repr__(self):
        time.sleep(3600)
        return "never"


class RaisingDict(dict):
    def get(self, *a, **kw):
        raise RuntimeError("no")
