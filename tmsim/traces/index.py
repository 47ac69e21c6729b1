"""The one in-memory index of a library's trace trees: run metadata, each run's full lineage by epoch, children by
(epoch, action), ancestry chains and descendants. The simulator, the oracle, ``tmsim policy check``, the surrogate's
training data and fidelity all read trees through it, so a leaderboard run builds it once.

It trusts what ``load_library`` returns: every run there is reachable from a root and holds its epochs (the reader
skips, and reports, whatever is not). ``roots`` lists only recorded trees (``source = 'recorded'``): a live run
written by the live hook into the same library is indexed and can be looked up, but it is not a starting point to
score policies from unless ``include_live=True``.

Example
-------
>>> from tmsim.traces import TreeIndex, load_library
>>> index = TreeIndex(load_library("traces"))                      # doctest: +SKIP
>>> root = index.roots[0]                                          # doctest: +SKIP
>>> index.lookup(root, ("lr_down", "continue", "lr_down"))         # doctest: +SKIP
'digits-mlp:diverge:s0+e5:lr_down+e15:lr_down'
"""
from __future__ import annotations

import json

import re
from collections import defaultdict
from typing import Iterator

from ..core.hparams import Hyperparams
from ..core.outcome import final_val_loss
from ..core.snapshot import EpochView
from .format import Library

ROW_FIELDS = list(EpochView._fields) + ["diverged"]


_REPLICATE = re.compile(r":r\d+(?=\+|$)")


def _settings(raw: str | None) -> dict:
    """A run's recorded optimizer settings (``{}`` when absent or unreadable: they only inform the surrogate)."""
    if not raw:
        return {}
    try:
        out = json.loads(raw)
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def path_of(run_id: str) -> str:
    """A run's *path*: its run id without the replicate (``digits-mlp:overfit:s0:r2+e5:lr_down`` ->
    ``digits-mlp:overfit:s0+e5:lr_down``). Replicates of one tree share their paths; the truth of a path is the
    distribution of its replicates' outcomes."""
    return _REPLICATE.sub("", run_id, count=1)


class TreeIndex:
    """The library's trees in memory (see the module docs). ``meta[run_id]`` holds the ``runs`` row plus ``hp_init``,
    ``n_losses``, ``optimizer_settings`` (the parsed ``optimizer_json``; ``{}`` when not recorded) and
    ``steps_per_epoch`` (None when steps are not recorded); ``index[run_id]`` is {epoch: row} of the run's full history.

    Parameters
    ----------
    library : Library
        As returned by ``load_library``.
    include_live : bool, default False
        Also list roots whose ``source`` is not ``recorded`` (live runs) in ``roots``.
    """

    def __init__(self, library: Library, include_live: bool = False):
        from .query import TraceDB

        self.library = library
        with TraceDB(library) as db:
            runs = db.sql("""select run_id, parent_run_id, root_run_id, task, scenario, seed, replicate, branch_epoch, branch_action,
                                    status, end_epoch, max_epochs, decide_every, source, init_lr, init_weight_decay,
                                    init_dropout, init_aux_loss_weight, optimizer, optimizer_json from runs""").to_pylist()
            own = db.sql(f"select run_id, {', '.join(ROW_FIELDS)}, wall_time_s from epochs order by run_id, epoch")
            # optimizer steps per epoch of each tree (null in version-1 files, which do not record steps)
            spe = {row["root"]: row["spe"] for row in db.sql(
                """select r.root_run_id as root, max(e.step) / max(e.epoch) as spe from epochs e join runs r using (run_id)
                   where e.step is not null and e.epoch > 0 group by 1""").to_pylist()}
        self.meta: dict[str, dict] = {}
        self.children: dict[str, dict[tuple[int, str], str]] = defaultdict(dict)
        #: path (a run id without its replicate) -> the run ids of that path, one per replicate that holds it
        self.by_path: dict[str, list[str]] = defaultdict(list)
        for r in runs:
            r["hp_init"] = Hyperparams.from_row(r, prefix="init_")
            r["n_losses"] = 2 if r["init_aux_loss_weight"] is not None else 1
            r["optimizer_settings"] = _settings(r.pop("optimizer_json"))
            r["path"] = path_of(r["run_id"])
            r["group"] = (r["task"], r["scenario"], r["seed"])
            self.meta[r["run_id"]] = r
            self.by_path[r["path"]].append(r["run_id"])
            if r["parent_run_id"] is not None:
                self.children[r["parent_run_id"]][(r["branch_epoch"], r["branch_action"])] = r["run_id"]
        for r in self.meta.values():
            r["steps_per_epoch"] = spe.get(r["root_run_id"])
        self.own: dict[str, dict[int, dict]] = defaultdict(dict)
        for row in own.to_pylist():
            self.own[row.pop("run_id")][row["epoch"]] = row
        self._lineage: dict[str, dict[int, dict]] = {}
        self._expected: dict[str, float] = {}
        self._replayed: dict[int, tuple[dict, EpochView, dict]] = {}
        self._replayed_runs: dict[str, tuple[list[dict], list[EpochView], list[int]]] = {}
        self.include_live = include_live
        self.roots = sorted(r for r, m in self.meta.items()
                            if m["parent_run_id"] is None and (include_live or m["source"] == "recorded"))

    def __getitem__(self, rid: str) -> dict[int, dict]:
        """{epoch: row} of the run's full history (ancestors up to each branch epoch, then its own epochs)."""
        if rid not in self._lineage:
            m = self.meta[rid]
            if m["parent_run_id"] is None:
                rows = dict(self.own.get(rid, {}))
            else:
                parent = self[m["parent_run_id"]]
                rows = {e: r for e, r in parent.items() if e <= m["branch_epoch"]}
                rows.update(self.own.get(rid, {}))
            self._lineage[rid] = rows
        return self._lineage[rid]

    def replayed(self, row: dict) -> tuple[dict, EpochView]:
        """A recorded row as a rollout holds it (``source = "replayed"``) and as a policy sees it, made once per row
        of the library (both are read, never changed, by the simulator)."""
        hit = self._replayed.get(id(row))
        if hit is None or hit[2] is not row:
            out = {**row, "source": "replayed"}
            hit = self._replayed[id(row)] = (out, EpochView.from_row(out), row)
        return hit[0], hit[1]

    def replayed_run(self, rid: str) -> tuple[list[dict], list[EpochView], list[int]]:
        """The run's full history as a rollout replays it: ``replayed`` of the rows of epochs 0, 1, ... up to the
        first epoch missing (rows, then views, by epoch), and the epochs among them that diverged. Made once per run
        (read, never changed, by the simulator)."""
        hit = self._replayed_runs.get(rid)
        if hit is None:
            rows = self[rid]
            outs, views, diverged = [], [], []
            while len(outs) in rows:
                out, view = self.replayed(rows[len(outs)])
                if out["diverged"]:
                    diverged.append(len(outs))
                outs.append(out)
                views.append(view)
            hit = self._replayed_runs[rid] = (outs, views, diverged)
        return hit

    def hparams_at(self, rid: str, epoch: int) -> Hyperparams | None:
        """The hyperparameters in force during ``epoch`` of run ``rid`` (None when it has no such epoch)."""
        r = self[rid].get(epoch)
        return None if r is None else Hyperparams.from_row(r)

    def expected_final_val_loss(self, path: str) -> float:
        """The mean over the tree's replicates of the final validation loss of ``path`` (the outcome rule).

        A replicate that holds the path scores its run. A replicate where a run on the way to the path diverged
        before the path's next branch epoch (so the branch was never recorded there) scores that divergence: this
        is what following the path in that replicate gives, and leaving it out would score a risky path on its
        survivors only. A replicate that lacks the path otherwise (a budgeted tree did not sample it) is left out."""
        hit = self._expected.get(path)
        if hit is None:
            hit = self._expected[path] = self._expected_final(path)
        return hit

    def _expected_final(self, path: str) -> float:
        rids = self.by_path[path]
        parts = path.split("+")
        held = {self.meta[r]["replicate"] for r in rids}
        outcomes = [self.final_val_loss(r) for r in rids]
        for root in self.by_path.get(parts[0], []):
            rep = self.meta[root]["replicate"]
            if rep in held:
                continue
            run = root
            for step in parts[1:]:  # "e15:lr_down": the child branched at epoch 15 by lr_down
                tag, action = step.split(":", 1)
                epoch = int(tag[1:])
                nxt = self.children.get(run, {}).get((epoch, action))
                if nxt is None:
                    if self.meta[run]["status"] == "diverged" and max(self[run], default=0) <= epoch:
                        outcomes.append(self.final_val_loss(run))
                    break
                run = nxt
        return sum(outcomes) / len(outcomes)

    def final_val_loss(self, rid: str) -> float:
        """The recorded final validation loss (diverged: the divergence penalty)."""
        rows = self[rid]
        return final_val_loss([rows[e] for e in sorted(rows)], self.meta[rid]["status"] == "diverged")

    def chain(self, rid: str) -> dict[int, str]:
        """{branch epoch: action} along the run's ancestry (the decisions that lead from its root to it)."""
        chain = {}
        r = self.meta[rid]
        while r["parent_run_id"] is not None:
            chain[r["branch_epoch"]] = r["branch_action"]
            r = self.meta[r["parent_run_id"]]
        return chain

    def descendants(self, rid: str) -> Iterator[str]:
        """``rid`` and every run branched from it, depth first."""
        stack = [rid]
        while stack:
            r = stack.pop()
            yield r
            stack.extend(self.children.get(r, {}).values())

    def sequence(self, rid: str) -> tuple[str, ...]:
        """The per-decision action list that leads from the root to ``rid`` (``continue`` where nothing happened)."""
        chain = self.chain(rid)
        every = self.meta[rid]["decide_every"]
        last = max(chain) if chain else 0
        return tuple(chain.get(e, "continue") for e in range(every, last + 1, every))

    def lookup(self, root: str, seq: tuple[str, ...]) -> str | None:
        """The recorded run reached from ``root`` by the per-decision actions ``seq`` (None if not recorded)."""
        rid = root
        every = self.meta[root]["decide_every"]
        for i, a in enumerate(seq):
            if a != "continue":
                rid = self.children.get(rid, {}).get(((i + 1) * every, a))
                if rid is None:
                    return None
        return rid
