"""The `expfs` command-line front end, installed as the `expfs_cli` package."""
