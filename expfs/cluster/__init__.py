"""Sweeps on a Dask cluster: one task per experiment, results recorded here.

Three modules, in the order a sweep meets them:

- `client` runs in the user's `expfs exp run --cluster`. It checks that
  Dask and a default remote are there, pushes the base snapshot and
  submits one task per experiment, keyed by its inputs so duplicates
  merge. Then it prints each experiment's output as it streams in,
  forwards stop requests and records each finished experiment in the
  user's store.
- `worker` runs inside a Dask worker: a plugin that checks the worker at
  start-up, and the task, which starts the experiment as a subprocess
  (Dask's worker processes are daemonic) and relays its output and stop
  requests.
- `node` is that subprocess: it keeps a node-local repository and store,
  shared by the worker processes of one machine, runs the experiment
  there with the usual `Runner` and pushes what it made to the remote.

Nothing here schedules work itself: placement, retries after a lost
worker and merging of identical tasks are Dask's.
"""

from __future__ import annotations

from expfs.errors import ExpfsError, UsageError

# The message of every "Dask is missing" error.
INSTALL_HINT = "pip install 'expfs[cluster]'"
# Start of an output line of the experiment process that reports a stage's
# progress as JSON ({"stage": ..., "action": ...}) for the live table. The
# record separator (0x1E) keeps it apart from the output of commands, which
# would have to print that control character to be mistaken for one.
PROGRESS_PREFIX = "\x1eexpfs-progress "


class DaskMissing(UsageError):
    """The `cluster` extra (Dask's `distributed`) is not installed."""


class ClusterError(ExpfsError):
    """The Dask scheduler could not be reached or refused the sweep."""


class WorkerUnfit(ExpfsError):
    """A Dask worker lacks what an experiment needs (FUSE or the remote)."""
