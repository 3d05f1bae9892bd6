"""Remotes: objects and run-cache entries shared through fsspec URLs.

Modules, lowest first: `config` defines remotes and `backend` writes
atomically on each fsspec backend. `transfer` pushes, pulls and verifies
objects, `inputs` keeps what a run key hashes, and `entries` reads and
writes run-cache entries on a remote. `runs` has the calls that repro and
the CLI make, `lazy` fetches the blobs that a lazy restore left on a
remote, `lease` lets one machine at a time run a stage, `records` shares
experiment records, and `gc` removes what nothing on a remote reaches.
"""
