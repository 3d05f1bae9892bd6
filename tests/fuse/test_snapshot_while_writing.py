"""Snapshots through the control socket while a tool keeps writing into the mount."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from fusehelpers import Mount

WRITER_AND_SNAPSHOTS = textwrap.dedent(
    """
    import sys, threading, time
    from expfs.fuse.control import ControlClient

    store_root, name, mountpoint = sys.argv[1:4]
    done = threading.Event()
    written = 0

    def write() -> None:
        global written
        while not done.is_set():
            with open(f"{mountpoint}/w{written % 50}.txt", "w") as f:
                f.write("x" * 3000)
            written += 1

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    snapshots = 0
    deadline = time.monotonic() + 5
    with ControlClient(store_root, name, timeout_s=20) as client:
        while time.monotonic() < deadline:
            client.snapshot()
            snapshots += 1
    done.set()
    writer.join(timeout=20)
    print(snapshots, written, writer.is_alive())
    """
)


def test_snapshots_during_writes_never_hang(mounted: Mount, tmp_path: Path) -> None:
    script = tmp_path / "snapshots.py"
    script.write_text(WRITER_AND_SNAPSHOTS)
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            str(mounted.store_root),
            mounted.name,
            str(mounted.path),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    snapshots, written, writer_alive = proc.stdout.split()
    # Throughput depends on the machine's load; what matters is that both
    # sides made progress and the script ended before its timeout.
    assert int(snapshots) >= 2
    assert int(written) >= 5
    assert writer_alive == "False"
