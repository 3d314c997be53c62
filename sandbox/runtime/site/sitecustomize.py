"""Flushes azureml-core's pending run records when any Python process of a run ends (PYTHONPATH puts it first).

On Azure the job wrapper calls ``_RunBase._kill()`` once, in the main process, after the script: what a
``subprocess`` or a ``multiprocessing``/DataLoader worker logged with ``Run.get_context()`` and did not
``flush()`` is lost, because azureml-core sends metrics from a timer thread and registers no exit hook.
Here every process of the run flushes at its end:

- a new interpreter (``subprocess.run([sys.executable, ...])``): at its exit, before its thread pools close;
- a forked worker (``multiprocessing`` with fork, PyTorch's DataLoader on Linux): at the worker's exit
  (``multiprocessing.util.Finalize``, which workers run and ``atexit`` does not). After the fork the worker
  forgets the run objects it inherited (their pending records are the parent's, which the parent sends),
  so its own ``Run.get_context()`` builds its own run and flushes only what the worker logged.

Nothing is imported at start (azureml-core loads only if the script imports it). Another
``sitecustomize`` further on the path (the image's, a user's) still runs, after this one.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.machinery
import importlib.util
import io
import os
import sys

#: Seconds a process waits at its end for its records to be sent (azureml-core's own default for _kill).
FLUSH_TIMEOUT = 40.0
_RUN_BASE = "azureml._run_impl.run_base"
_FLUSHED: dict[int, bool] = {}
#: Classes of azureml-core that keep one thread pool for every run of a process.
_SHARED_POOLS = (("azureml._restclient.clientbase", "ClientBase"),
                 ("azureml._restclient.service_context", "ServiceContext"),
                 ("azureml._run_impl.run_history_facade", "RunHistoryFacade"))


def _flush() -> None:
    """Send what this process's runs still hold (quietly: ``_kill`` prints its cleanup lines)."""
    module = sys.modules.get(_RUN_BASE)
    if module is None or _FLUSHED.get(os.getpid()):
        return
    _FLUSHED[os.getpid()] = True  # a forked worker inherits the exit hook too: one flush per process
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            module._RunBase._kill(timeout=FLUSH_TIMEOUT)
    except Exception as exc:  # a process must still exit: say what was lost
        print(f"aml-sandbox: this process's run records could not all be sent: {type(exc).__name__}: {exc}",
              file=sys.stderr)


def _after_fork_in_worker(_: object = None) -> None:
    """In a forked worker: drop the inherited runs, flush the worker's own at its exit."""
    module = sys.modules.get(_RUN_BASE)
    if module is not None:
        queue = module._RunBase._registered_kill_handlers
        with contextlib.suppress(Exception):
            while True:
                queue.get_nowait()
        run_module = sys.modules.get("azureml.core.run")
        instances = getattr(getattr(run_module, "_SubmittedRun", None), "_SubmittedRun__instances", None)
        if isinstance(instances, dict):
            instances.clear()
        # The thread pools the worker inherited have no threads after a fork: the worker's runs get new ones.
        for module_name, class_name in _SHARED_POOLS:
            owner = getattr(sys.modules.get(module_name), class_name, None)
            if owner is not None and hasattr(owner, "_worker_pool"):
                owner._worker_pool = None
    import multiprocessing.util

    multiprocessing.util.Finalize(None, _flush, exitpriority=100)


def _install() -> None:
    import concurrent.futures.thread  # noqa: F401  (registers its own exit hook first: see below)
    import multiprocessing.util
    import threading

    # At interpreter exit the thread pools azureml-core sends with stop taking work before ``atexit`` runs,
    # in threading's own exit hooks, which run last-registered first: this one runs before the pools close.
    register = getattr(threading, "_register_atexit", atexit.register)
    register(_flush)
    # A new worker clears the finalizers it inherited, then runs these hooks (spawned workers import this file).
    multiprocessing.util.register_after_fork(_after_fork_in_worker, _after_fork_in_worker)


def _chain() -> None:
    """Run the next ``sitecustomize`` on the path (this one shadows it)."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        print(f"Error in sitecustomize {spec.origin}: {type(exc).__name__}: {exc}", file=sys.stderr)


_install()
_chain()
