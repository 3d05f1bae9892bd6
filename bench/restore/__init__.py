"""Restore benchmark: cache-hit restores, workspace creation and reads, side by side.

Run `python -m bench.restore --help` from the project root. Each part times
expfs and the tools a user would pick instead in the same run, checks what
each restored against the original outputs before a time counts, and
writes the "Restore" section of bench/RESULTS.md and PNG plots.
"""
