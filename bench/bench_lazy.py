"""Benchmark a second clone's restore of a 1 GiB output from S3: lazy vs eager.

Run from the project root with the development environment:

    .venv/bin/python -m bench.bench_lazy [--reps N] [--size-mib N] [--quick]

It starts one SeaweedFS S3 server (`weed mini`, from the test helpers) on
127.0.0.1, and a first clone runs a one-stage pipeline whose output is one
file (sparse: 3 MiB of random data, the rest zeros) and pushes it. Each rep
then clones the repository twice and times, in a rotated order:

- eager: `expfs repro` in the plain checkout, which fetches the blob and
  writes the file out;
- lazy: `expfs repro` inside a mounted experiment, which fetches only
  trees and grafts them, then the first full read of the file through the
  mount, which fetches the blob.

A time counts only when the stage did not run, and the file read back (the
checkout's file, or the mount's) hashes to the pushed digest. The lazy
repro must leave the blob out of the local store. The script prints a
summary and, unless `--quick`, rewrites the "Lazy restore" section of
bench/RESULTS.md between its markers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Run as a file (`python bench/bench_lazy.py`), the project root is not
    # on sys.path, and the bench and tests packages are in it.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    EXPFS,
    BenchError,
    Section,
    add_results_option,
    load_text,
    run_timed,
)
from expfs_cli.argtypes import positive_int  # noqa: E402

SECTION = Section("## Lazy restore", "bench_lazy.py")
MIB = 1 << 20


def hash_through(path: Path) -> str:
    import blake3

    hasher = blake3.blake3()
    with open(path, "rb") as f:
        while block := f.read(MIB):
            hasher.update(block)
    return hasher.hexdigest()


class Setup:
    """The server, the remote's options and the origin repository."""

    def __init__(self, work: Path, server: Any, size_mib: int) -> None:
        from tests.remote_servers import s3_options
        from tests.test_remote_lazy_mount import GEN, PIPELINE

        self.work = work
        self.url = server.url("/lazy")
        self.flags = [
            arg for k, v in s3_options(server).items() for arg in ("-o", f"{k}={v}")
        ]
        self.origin = work / "origin"
        self.origin.mkdir()
        git = ["git", "-C", str(self.origin)]
        run_timed(["git", "init", "-q", str(self.origin)], work)
        (self.origin / "dvc.yaml").write_text(PIPELINE)
        (self.origin / "gen.py").write_text(GEN)
        (self.origin / "params.yaml").write_text(f"size_mib: {size_mib}\n")
        (self.origin / ".gitignore").write_text("ran.log\n")
        run_timed([*git, "add", "-A"], work)
        run_timed(
            [*git, "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "p"],
            work,
        )
        self.add_remote(self.origin)
        _, out = run_timed([EXPFS, "repro"], self.origin)
        if "ran" not in out:
            raise BenchError(f"the first clone did not run the stage: {out}")
        self.digest = hash_through(self.origin / "big.bin")

    def add_remote(self, repo: Path) -> None:
        run_timed([EXPFS, "init"], repo)
        remote = [EXPFS, "remote", "add", "origin", self.url, "--default", "--local"]
        run_timed([*remote, *self.flags], repo)

    def clone(self, name: str) -> Path:
        folder = self.work / name
        run_timed(["git", "clone", "-q", str(self.origin), str(folder)], self.work)
        self.add_remote(folder)
        return folder


def check_restored(out: str, repo: Path) -> None:
    if "restored" not in out or (repo / "ran.log").exists():
        raise BenchError(f"the stage was not restored in {repo}: {out}")


def measure_eager(setup: Setup, rep: int) -> dict[str, float]:
    clone = setup.clone(f"eager-{rep}")
    try:
        seconds, out = run_timed([EXPFS, "repro"], clone)
        check_restored(out, clone)
        if hash_through(clone / "big.bin") != setup.digest:
            raise BenchError("the checkout's big.bin differs from the pushed one")
        return {"repro": seconds}
    finally:
        shutil.rmtree(clone, ignore_errors=True)


def measure_lazy(setup: Setup, rep: int) -> dict[str, float]:
    clone = setup.clone(f"lazy-{rep}")
    mount = clone / ".expfs" / "mnt" / "e1"
    try:
        run_timed([EXPFS, "exp", "new", "e1"], clone)
        run_timed([EXPFS, "mount", "e1"], clone)
        seconds, out = run_timed([EXPFS, "repro"], mount)
        check_restored(out, mount)
        blob = clone / ".expfs" / "objects" / setup.digest[:2] / setup.digest
        if blob.exists():
            raise BenchError("the lazy restore fetched the blob")
        start = time.perf_counter()
        digest = hash_through(mount / "big.bin")
        read_s = time.perf_counter() - start
        if digest != setup.digest:
            raise BenchError("big.bin read through the mount differs")
        return {"repro": seconds, "read": read_s}
    finally:
        subprocess.run([EXPFS, "umount", "e1"], cwd=clone, capture_output=True)
        if os.path.ismount(mount):
            subprocess.run(["fusermount3", "-uz", str(mount)], check=False)
        shutil.rmtree(clone, ignore_errors=True)


def measure(work: Path, reps: int, size_mib: int) -> dict[str, list[dict[str, float]]]:
    from tests.remote_servers import start_seaweedfs, stop

    server = start_seaweedfs(work / "weed", bucket="bench")
    try:
        setup = Setup(work, server, size_mib)
        samples: dict[str, list[dict[str, float]]] = {"eager": [], "lazy": []}
        for rep in range(reps):
            order = ["eager", "lazy"] if rep % 2 == 0 else ["lazy", "eager"]
            for kind in order:
                measure_one = measure_eager if kind == "eager" else measure_lazy
                samples[kind].append(measure_one(setup, rep))
                print(f"rep {rep + 1} {kind}: {samples[kind][-1]}", flush=True)
        return samples
    finally:
        stop(server.proc)


def render(samples: dict[str, list[dict[str, float]]], argv: str, size_mib: int) -> str:
    eager = statistics.median(s["repro"] for s in samples["eager"])
    lazy = statistics.median(s["repro"] for s in samples["lazy"])
    both = statistics.median(s["repro"] + s["read"] for s in samples["lazy"])
    reps = len(samples["eager"])
    uname = os.uname()
    load = load_text(os.getloadavg())
    lines = [
        SECTION.heading,
        SECTION.begin,
        "",
        f"`python -m bench.bench_lazy {argv}`, {time.strftime('%Y-%m-%d')}: medians "
        f"of {reps} reps. Machine: {os.cpu_count()} cores, {uname.sysname} "
        f"{uname.release}, Python {sys.version.split()[0]}; load average {load} "
        "after the runs. One SeaweedFS S3 server on 127.0.0.1; a second clone "
        f"restores a stage whose output is one {size_mib} MiB file (sparse, 3 MiB "
        "of data), each time `expfs repro` included start-up:",
        "",
        "| what | median | ratio to eager |",
        "| --- | ---: | ---: |",
        f"| eager: `repro` in a checkout (fetch, then write out) | {eager:.2f} s | 1 |",
        f"| lazy: `repro` in a mount (trees only, graft) | {lazy:.2f} s | "
        f"{lazy / eager:.3f} |",
        f"| lazy `repro`, then the first full read through the mount | {both:.2f} s | "
        f"{both / eager:.2f} |",
        "",
        SECTION.end,
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_lazy", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--reps", type=positive_int, default=3, help="reps of each restore (default 3)"
    )
    parser.add_argument(
        "--size-mib",
        type=positive_int,
        default=1024,
        help="size of the output file in MiB (default 1024)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one rep of 16 MiB; print only, RESULTS.md unchanged",
    )
    add_results_option(parser)
    args = parser.parse_args(argv)
    reps, size_mib = (1, 16) if args.quick else (args.reps, args.size_mib)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-lazy-") as folder:
            samples = measure(Path(folder), reps, size_mib)
    except BenchError as exc:
        print(f"bench_lazy: {exc}", file=sys.stderr)
        return 1
    text = render(samples, " ".join(argv), size_mib)
    print(text)
    if not args.quick:
        SECTION.write(text, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
