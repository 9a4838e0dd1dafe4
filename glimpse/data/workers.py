"""DataLoader workers that survive a SIGTERM meant for the whole job, so the main process can
save its last checkpoint first."""
from __future__ import annotations

import os
import signal
import threading

from lightning.fabric.utilities.seed import pl_worker_init_function


def worker_init(worker_id: int) -> None:
    """A DataLoader worker outlives a SIGTERM that is not from its main process.

    ``timeout``, ``kill -- -PGID`` and SLURM's scancel signal every process of a job; a worker
    that died at once would end the run with "DataLoader worker killed" before
    :class:`glimpse.training.last_checkpoint.LastCheckpoint` in the main process saves and exits 143. So the
    worker blocks SIGTERM and a thread takes each one: from the main process (the DataLoader or
    ``multiprocessing`` shutting its workers down) it ends the worker as usual; from anyone else
    it is left to the main process, which shuts the worker down when it exits. (Ignoring SIGTERM
    outright would hang an exit on an error: ``multiprocessing`` terminates, then joins, its
    workers.) Where ``signal.sigwaitinfo`` does not exist (macOS, Windows) the worker keeps the
    default. Then Lightning's worker seeding, which ``seed_everything(workers=True)`` adds to a
    loader without a ``worker_init_fn``."""
    if hasattr(signal, "sigwaitinfo"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started from here on inherit it
        threading.Thread(target=_end_on_sigterm_from, args=(os.getppid(),), daemon=True,
                         name="sigterm-from-main-process").start()
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        pl_worker_init_function(worker_id)


def _end_on_sigterm_from(main_pid: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != main_pid:
        pass  # a signal to the whole job: the main process decides
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # the disposition is still the default
    os.kill(os.getpid(), signal.SIGTERM)  # delivered to this thread, the only one not blocking it: the default end
