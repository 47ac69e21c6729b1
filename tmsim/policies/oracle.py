"""The oracle: at a recorded node, the action whose recorded subtree reaches the best *expected* final validation
loss.

Training is chaotic, so the truth at a node is a distribution: a tree recorded with replicates holds each path once
per replicate. The oracle scores a path by the mean over its replicates of the final validation loss (a diverged run
scores the divergence penalty of ``tmsim.core.outcome``), and a node's value is the best expected outcome among
its own path and every recorded path below it; so it acts the same way in every replicate of a tree, and its
choice is not fitted to one replicate's noise. With one replicate this is the best recorded final.

It reads the answers off the trace tree, so it is not a policy one could deploy; every report marks it as such
(``is_upper_bound = True``). Ties go to ``continue`` (the cheaper choice). At a node the library does not hold (off
the recorded tree) it has nothing to read and proposes ``continue``.

**Where it is an upper bound.** Only where the tree is *full*: every menu action recorded at every node and every
decision epoch (``full_tree``; the cheap tasks of the bundled library are recorded so). There, no sequence of menu
actions taken alike in every replicate beats its expected outcome. On a budgeted (sampled) tree a path the library
did not record may be better, and a policy that takes it is predicted by the surrogate and can end below the
oracle; a continuous action (``set_lr``) is recorded only where ``tmsim evaluate`` records a policy's exact value
(a branch ``set_lr=VALUE``, which the oracle may take but no full tree holds), and a policy whose choices differ
between replicates can also beat an expectation. ``upper_bound_roots`` lists the roots where the bound holds; the leaderboard prints that
coverage and marks every row that beat the oracle on some root.
"""
from __future__ import annotations

from ..core.actions import Proposal
from ..core.snapshot import Snapshot


class OraclePolicy:
    """See the module docs. ``library`` is the ``TreeIndex`` (or ``Library``) whose recorded answers it reads."""

    needs_library = True
    is_upper_bound = True

    def __init__(self, library, policy_id: str = "oracle", version: str = "1"):
        from ..traces.index import TreeIndex

        index = library if isinstance(library, TreeIndex) else TreeIndex(library)
        self.index, self.policy_id, self.version = index, policy_id, version
        self._best: dict[str, float] = {}
        self._kids: dict[str, dict[tuple[int, str], str]] = {}

    def _children(self, path: str) -> dict[tuple[int, str], str]:
        """{(epoch, action): child path} over every replicate that holds ``path``."""
        if path not in self._kids:
            kids = {}
            for rid in self.index.by_path[path]:
                for key, child in self.index.children.get(rid, {}).items():
                    kids[key] = self.index.meta[child]["path"]
            self._kids[path] = kids
        return self._kids[path]

    def _subtree(self, path: str) -> float:
        """The best expected final val loss among ``path`` and every recorded path below it."""
        if path not in self._best:
            self._best[path] = min([self.index.expected_final_val_loss(path)]
                                   + [self._subtree(c) for c in self._children(path).values()])
        return self._best[path]

    def values(self, run_id: str, epoch: int) -> dict[str, float]:
        """Best expected final val loss reachable by each action at (run, epoch); empty off the tree."""
        meta = self.index.meta.get(run_id)
        if meta is None:
            return {}
        path = meta["path"]
        kids = self._children(path)
        out = {"continue": min([self.index.expected_final_val_loss(path)]
                               + [self._subtree(c) for (e, _), c in kids.items() if e > epoch])}
        for (e, action), c in kids.items():
            if e == epoch:
                out[action] = self._subtree(c)
        return out

    def decide(self, snapshot: Snapshot) -> Proposal:
        vals = self.values(snapshot.run_id, snapshot.epoch)
        if len(vals) <= 1:
            return Proposal(action="continue", reason="no recorded alternatives here")
        action = min(vals, key=lambda a: (vals[a], a != "continue"))
        why = f"best expected final val loss {vals[action]:.4g} (upper bound)"
        name, exact, value = action.partition("=")
        if exact:  # a branch recorded with an exact value (``tmsim evaluate``): propose what it applied
            from ..core.menu import ACTION_TABLE

            entry = ACTION_TABLE.get(name)
            return Proposal(action=name, value=float(value) if entry is not None and entry.is_set else None, reason=why)
        return Proposal(action=action, reason=why)


def full_tree(index, root: str, menu: set[str] | None = None) -> bool:
    """Whether the tree of ``root`` (one replicate) holds every action of ``menu`` (default: every branch action
    recorded for the task anywhere in the library) at every decision epoch of every run that is still training
    there: then the oracle's choice is the best the recorded menu allows."""
    m = index.meta[root]
    if menu is None:
        menu = task_menu(index, m["task"])
    every, end = m["decide_every"], m["max_epochs"]
    for rid in index.descendants(root):
        r = index.meta[rid]
        if r["branch_action"] == "stop":
            continue
        rows = index[rid]
        start = r["branch_epoch"] if r["parent_run_id"] is not None else 0
        kids = index.children.get(rid, {})
        for d in range(every, end, every):
            if d <= start:
                continue
            row = rows.get(d)
            if row is None or row["diverged"]:
                break  # the run ended (diverged) before this decision
            if any((d, a) not in kids for a in menu):
                return False
    return True


def task_menu(index, task: str) -> set[str]:
    """Every menu action the library records as a branch of ``task`` (branches recorded with an exact value,
    ``ACTION=VALUE``, are extras, not part of the menu a full tree holds)."""
    return {r["branch_action"] for r in index.meta.values()
            if r["task"] == task and r["parent_run_id"] is not None and "=" not in r["branch_action"]}


def upper_bound_roots(index, roots) -> set[tuple]:
    """The root groups (task, scenario, seed) among ``roots`` whose every replicate's tree is full
    (``full_tree``): where the oracle is an upper bound on the recorded menu."""
    full: dict[tuple, bool] = {}
    menus: dict[str, set[str]] = {}
    for r in roots:
        g = index.meta[r]["group"]
        menu = menus.get(g[0]) or menus.setdefault(g[0], task_menu(index, g[0]))
        full[g] = full.get(g, True) and full_tree(index, r, menu)
    return {g for g, ok in full.items() if ok}
