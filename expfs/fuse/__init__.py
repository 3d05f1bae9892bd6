"""FUSE: the workspace's operations, the mount daemon and its control socket.

Importing this package loads neither pyfuse3 nor trio; `expfs.fuse.ops` and
`expfs.fuse.daemon` do, so the CLI imports them only where it mounts.
"""
