"""Snapshots: build trees from folders and Git commits, diff them, write them out."""
