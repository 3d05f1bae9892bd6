"""Benchmark the store: snapshots, hashing and CLI start-up, beside common tools.

Run from the project root after `make test` (or `make venv`):

    .venv/bin/python bench/bench_store.py [--runs N] [--work DIR]

It prints a table and rewrites the "Store" section of bench/RESULTS.md,
leaving other sections alone. Every figure is the median of several runs,
taken in one run of this script, so the ratios compare tools on the same
machine state.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from expfs.store import init_store, store_for
from expfs.store.lmdbenv import close_environment
from expfs.store.objects import hash_file
from expfs.tree.snapshot import RACY_WINDOW_NS
from expfs_cli.argtypes import positive_int

if __package__ in (None, ""):
    # Run as a file (`python bench/bench_store.py`), the project root is not
    # on sys.path, and the bench package is in it.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    EXPFS,
    Section,
    add_results_option,
    cpu_model,
    median_time,
)

SECTION = Section("## Store")
TREE_FILES = 10_000
TREE_FILE_BYTES = 4096
BIG_FILE_BYTES = 1 << 30


def run(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(args, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def make_tree(root: Path) -> None:
    """Write TREE_FILES files of TREE_FILE_BYTES random bytes, 100 per folder."""
    for i in range(TREE_FILES):
        folder = root / f"d{i // 100:03}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i % 100:03}.bin").write_bytes(os.urandom(TREE_FILE_BYTES))


def make_big_file(path: Path) -> None:
    with open(path, "wb") as f:
        for _ in range(BIG_FILE_BYTES >> 24):
            f.write(os.urandom(1 << 24))


def reset_store(repo: Path) -> None:
    store_root = repo / ".expfs"
    if store_root.exists():
        close_environment(str(store_root / "index"))
        subprocess.run(["chmod", "-R", "u+w", str(store_root)], check=True)
        shutil.rmtree(store_root)
    run(EXPFS, "init", cwd=repo)


def bench_snapshots(repo: Path, runs: int) -> dict[str, float]:
    data = repo / "data"
    make_tree(data)
    # Files changed within the racy window are re-read by design; let the
    # new tree age past it so the second snapshot measures the stat cache.
    time.sleep(RACY_WINDOW_NS / 1e9 + 0.5)
    first = median_time(
        lambda: run(EXPFS, "snapshot", "data", cwd=repo),
        runs,
        setup=lambda: reset_store(repo),
    )
    second = median_time(lambda: run(EXPFS, "snapshot", "data", cwd=repo), runs + 2)
    copy_target = repo.parent / "tree-copy"
    cp = median_time(
        lambda: run("cp", "-r", str(data), str(copy_target)),
        runs,
        setup=lambda: shutil.rmtree(copy_target, ignore_errors=True),
    )
    shutil.rmtree(copy_target, ignore_errors=True)
    return {"first": first, "second": second, "cp": cp}


def bench_hashing(repo: Path, runs: int) -> dict[str, float]:
    big = repo / "big.bin"
    make_big_file(big)
    hash_file(str(big))  # warm the page cache for every tool alike
    store = store_for(str(repo))
    copy_target = repo.parent / "big-copy"
    results = {
        "blake3": median_time(lambda: hash_file(str(big)), runs),
        "put": median_time(
            lambda: store.put_file(str(big)),
            runs,
            setup=lambda: store.remove_blob(hash_file(str(big))),
        ),
        "sha256sum": median_time(lambda: run("sha256sum", str(big)), runs),
        "cp": median_time(
            lambda: run("cp", str(big), str(copy_target)),
            runs,
            setup=lambda: copy_target.unlink(missing_ok=True),
        ),
    }
    copy_target.unlink(missing_ok=True)
    big.unlink()
    return results


def bench_startup(repo: Path, runs: int) -> dict[str, float]:
    digest = subprocess.run(
        [EXPFS, "snapshot", "--rev", "HEAD"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[-1]
    return {
        "python": median_time(lambda: run(sys.executable, "-c", "pass"), runs),
        "help": median_time(lambda: run(EXPFS, "--help", cwd=repo), runs),
        "ls": median_time(lambda: run(EXPFS, "ls", digest, cwd=repo), runs),
    }


def hardware() -> str:
    memory = subprocess.run(["free", "-h"], capture_output=True, text=True).stdout
    total = memory.splitlines()[1].split()[1]
    fs = subprocess.run(["df", "-T", "."], capture_output=True, text=True).stdout
    fstype = fs.splitlines()[1].split()[1]
    return (
        f"{os.cpu_count()} cores ({cpu_model()}), {total} RAM, {fstype}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def render(
    snap: dict[str, float], hashed: dict[str, float], start: dict[str, float], runs: int
) -> str:
    gib = BIG_FILE_BYTES / (1 << 30)

    def rate(seconds: float) -> str:
        return f"{gib / seconds:.2f} GiB/s"

    lines = [
        SECTION.heading,
        "",
        f"`bench/bench_store.py --runs {runs}`, {time.strftime('%Y-%m-%d')}: each figure "
        f"is the median of {runs} runs ({runs + 2} for the second snapshot, "
        f"{runs * 4} for start-up).",
        f"Machine: {hardware()}.",
        "",
        f"Snapshot of {TREE_FILES:,} files of {TREE_FILE_BYTES} random bytes (100 folders), "
        "through the `expfs snapshot` command, start-up included:",
        "",
        "| what | median | ratio |",
        "| --- | ---: | ---: |",
        f"| first snapshot (empty store) | {snap['first']:.2f} s | {snap['first'] / snap['cp']:.1f}× `cp -r` |",
        f"| second snapshot (unchanged, stat cache) | {snap['second']:.3f} s | {snap['second'] / snap['cp']:.2f}× `cp -r` |",
        f"| `cp -r` of the same tree | {snap['cp']:.2f} s | 1 |",
        "",
        "`cp` writes without fsync and leaves the data in the page cache, while "
        "the store fsyncs every blob before renaming it into place. How long `cp` "
        "takes depends on how much dirty data the kernel is writing back at the "
        "time, so its figures vary widely between runs.",
        "",
        "One 1 GiB file of random bytes, in the page cache:",
        "",
        "| what | median | throughput | ratio to `sha256sum` |",
        "| --- | ---: | ---: | ---: |",
        f"| expfs `hash_file` (BLAKE3, multithreaded) | {hashed['blake3']:.2f} s | {rate(hashed['blake3'])} | {hashed['blake3'] / hashed['sha256sum']:.2f} |",
        f"| expfs `put_file` (hash, copy, fsync, rename) | {hashed['put']:.2f} s | {rate(hashed['put'])} | {hashed['put'] / hashed['sha256sum']:.2f} |",
        f"| `sha256sum` | {hashed['sha256sum']:.2f} s | {rate(hashed['sha256sum'])} | 1 |",
        f"| `cp` | {hashed['cp']:.2f} s | {rate(hashed['cp'])} | {hashed['cp'] / hashed['sha256sum']:.2f} |",
        "",
        "Command start-up:",
        "",
        "| what | median | ratio to `python -c pass` |",
        "| --- | ---: | ---: |",
        f"| `python -c pass` (the same interpreter) | {start['python'] * 1000:.0f} ms | 1 |",
        f"| `expfs --help` | {start['help'] * 1000:.0f} ms | {start['help'] / start['python']:.1f} |",
        f"| `expfs ls DIGEST` (opens the store) | {start['ls'] * 1000:.0f} ms | {start['ls'] / start['python']:.1f} |",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=positive_int, default=5, help="timed runs per figure (median)"
    )
    parser.add_argument(
        "--work", help="folder for the test data (default: a new temporary one)"
    )
    add_results_option(parser)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="expfs-bench.", dir=args.work))
    try:
        repo = work / "repo"
        repo.mkdir()
        run("git", "init", "-q", str(repo))
        run(
            "git",
            "-C",
            str(repo),
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.invalid",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "empty",
        )
        init_store(str(repo))
        print(f"snapshots of {TREE_FILES} files ...", flush=True)
        snap = bench_snapshots(repo, args.runs)
        print("hashing 1 GiB ...", flush=True)
        hashed = bench_hashing(repo, args.runs)
        print("start-up ...", flush=True)
        start = bench_startup(repo, args.runs * 4)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(work)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    section = render(snap, hashed, start, args.runs)
    print(section)
    SECTION.write(section, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
