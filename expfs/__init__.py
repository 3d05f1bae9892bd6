"""expfs: copy-on-write FUSE workspaces and a run-cache for ML experiments."""

__version__ = "0.1.0"
