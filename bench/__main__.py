"""Run every benchmark under bench/: `python -m bench [--quick] [restore options]`.

Each benchmark script present runs in its own process, one after the other,
so a missing or failing one does not stop the rest. The restore benchmark
gets every argument; the other scripts run only in a full run, or with
`--quick` when their `--help` lists that option.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT = BENCH_DIR.parent
OTHER_SCRIPTS = ("bench_store.py", "bench_fs.py", "bench_show.py", "bench_exp.py")
OTHER_SCRIPTS += ("bench_cluster.py",)
OTHER_SCRIPTS += ("bench_remote.py",)


def supports_quick(script: Path) -> bool:
    usage = subprocess.run(
        [sys.executable, str(script), "--help"],
        capture_output=True,
        text=True,
        cwd=PROJECT,
    )
    return "--quick" in usage.stdout


def run_others(quick: bool) -> list[str]:
    failed = []
    for name in OTHER_SCRIPTS:
        script = BENCH_DIR / name
        if not script.exists():
            print(f"== {name}: not present, skipped", flush=True)
            continue
        argv = [sys.executable, str(script)]
        if quick:
            if not supports_quick(script):
                print(f"== {name}: has no --quick mode, skipped", flush=True)
                continue
            argv.append("--quick")
        print(f"== {name}", flush=True)
        if subprocess.run(argv, cwd=PROJECT).returncode != 0:
            failed.append(name)
    return failed


def main(argv: list[str]) -> int:
    failed = run_others(quick="--quick" in argv)
    print("== restore", flush=True)
    restore = [sys.executable, "-m", "bench.restore", *argv]
    if subprocess.run(restore, cwd=PROJECT).returncode != 0:
        failed.append("restore")
    if failed:
        print(f"benchmarks that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
