"""Evaluation: the leaderboard, its report, fidelity, and the promotion gate.

Submodules are imported on use (``tmsim.evaluate.leaderboard``, ``.report``, ``.fidelity``, ``.promote``):
``promote`` checks a record without loading the simulator, so the live hook can use it in a training process.
"""
