"""Remotes: objects and run-cache entries shared through fsspec URLs.

Modules, lowest first: `config` (where remotes are defined), `backend`
(atomic writes per fsspec backend), `transfer` (objects: push, pull,
verify), `inputs` (what a run key hashes), `entries` (run-cache entries on
a remote), `runs` (the calls that repro and the CLI make) and `gc`.
"""
