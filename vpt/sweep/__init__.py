"""The experiment runner: hyper-parameter search on Optuna (``vpt sweep``) and packed trials; the ``[sweep]``
extra. The library never imports it (tests/test_layering.py): it sits on public hooks of the engine and the
model (``vpt.engine.train`` with ``Callback``s, ``Task.build_optimizer`` / ``Task.handles_divergence``, the
run-folder marker and lock of ``vpt.engine.rundir``, ``PromptedModel.forward_features_sets``).

- ``space``: SPACE.yaml -> a validated search space over dotted config fields (as ``--set``);
- ``study``: Optuna storage / study / sampler / pruner from the command's flags, heartbeats and retries;
- ``worker``: one worker's ask / train / tell loop and the per-epoch reporting callback;
- ``run``: the sweep (search, widening past edges, final runs, results.json);
- ``folder``: the sweep's output folder, claimed with the run-folder marker and a shared lock;
- ``packed`` / ``packed_task``: K trials that differ only in their optimisation settings in one backbone pass;
- ``torchrun`` / ``launch``: a trial as a torchrun job (``--nproc-per-trial``);
- ``report``: the summary table (markdown, CSV) and plots people read.

Only ``study``, ``worker`` and ``report`` import Optuna / matplotlib, and only when called.
"""
