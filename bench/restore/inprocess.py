"""Time expfs operations inside one process, without the CLI's start-up.

Run by the benchmark with the project's interpreter, as a script:

    python inprocess.py repro ROOT          # Repro(...).run() in checkout ROOT
    python inprocess.py create ROOT NAME    # create_experiment on a snapshotted base

It prints one JSON object: the seconds the call took and what it did.
"""

from __future__ import annotations

import io
import json
import sys
import time


def time_repro(root: str) -> dict[str, object]:
    from expfs.repro.engine import Repro
    from expfs.repro.place import CheckoutPlace
    from expfs.store.repo import store_for

    store = store_for(root)
    start = time.perf_counter()
    repro = Repro(store, CheckoutPlace(store, root), out=io.StringIO())
    outcomes = repro.run()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "actions": [o.action for o in outcomes]}


def time_create(root: str, name: str) -> dict[str, object]:
    """Time creating an experiment whose base is already snapshotted.

    The working tree is snapshotted first, untimed, as a sweep does once
    for all its experiments. The clock covers the record, the workspace
    and the Git worktree.
    """
    from expfs.experiments import (
        create_experiment,
        repo_root,
        resolve_commit,
        snapshot_base,
    )
    from expfs.store.repo import store_for
    from expfs.workspace import Workspace

    # Imports are start-up, timed with the whole command; not here.
    del Workspace
    store = store_for(root)
    repo = repo_root(store)
    base = snapshot_base(store, repo)
    commit = resolve_commit(repo, "HEAD")
    start = time.perf_counter()
    experiment = create_experiment(store, repo, name, base=base, commit=commit)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "actions": ["created"], "base": experiment.base}


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "repro":
        result = time_repro(argv[1])
    elif len(argv) == 3 and argv[0] == "create":
        result = time_create(argv[1], argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
