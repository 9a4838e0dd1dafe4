"""What keeps a training run going and resumable, as Lightning plugins and callbacks:

- :mod:`glimpse.training.checkpoint_io`: ``AtomicCheckpointIO``, checkpoints written atomically;
- :mod:`glimpse.training.last_checkpoint`: ``LastCheckpoint``, a resumable ``last.ckpt`` (by
  steps, seconds, epoch and SIGTERM, with the RNG states);
- :mod:`glimpse.training.finite_gradients`: ``FiniteGradients``, a stop at the first
  non-finite loss or gradient;
- :mod:`glimpse.training.cpu_budget`: ``CpuBudget``, a stop after a budget of CPU time.

All plug into Lightning's own machinery, so ``trainer.fit(ckpt_path=...)`` restores everything
else (weights, optimiser, scheduler, loop progress, the data order through the datamodule's state).
"""
