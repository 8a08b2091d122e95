"""Hyper-parameter search on Optuna (``vpt sweep``) and packed trials.

- ``space``: SPACE.yaml -> a validated search space over dotted config fields (as ``--set``);
- ``study``: Optuna storage / study / sampler / pruner from the command's flags (needs ``vpt[sweep]``);
- ``packed``: K trials that differ only in their optimisation settings trained in one backbone pass;
- ``report``: the summary table (markdown, CSV) and plots people read.

Only ``study`` and ``report`` import Optuna / matplotlib, and only when called.
"""
