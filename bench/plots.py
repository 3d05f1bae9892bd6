"""Plot restore time against output size and file count, one line per tool.

    python bench/plots.py RECORD.json [OUT_DIR]

reads the record `python -m bench.restore` writes (bench/plots/restore.json
by default) and writes restore_size.png and restore_files.png: log-log,
median time per tool with min–max error bars.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

# Tools in the order of the results table, with the label of each line.
TOOLS = {
    "expfs-mount": "expfs mount",
    "expfs-checkout": "expfs default",
    "expfs-hardlink": "expfs hardlink",
    "dvc-copy": "DVC copy",
    "dvc-hardlink": "DVC hardlink",
    "dvc-symlink": "DVC symlink",
    "cp-a": "cp -a",
    "cp-al": "cp -al",
}


def series(
    cases: list[dict[str, Any]], tool: str, x_key: str
) -> tuple[list[float], list[float], list[float], list[float]]:
    """Return x, median, and the distances down to min and up to max, for measured cases."""
    xs, medians, lows, highs = [], [], [], []
    for case in sorted(cases, key=lambda c: c[x_key]):
        result = case.get("tools", {}).get(tool)
        if not result or result["status"] != "ok" or not result["command_s"]:
            continue
        samples = result["command_s"]
        median = statistics.median(samples)
        xs.append(case[x_key])
        medians.append(median)
        lows.append(median - min(samples))
        highs.append(max(samples) - median)
    return xs, medians, lows, highs


def plot(
    cases: list[dict[str, Any]], x_key: str, xlabel: str, title: str, path: Path
) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for tool, label in TOOLS.items():
        xs, medians, lows, highs = series(cases, tool, x_key)
        if not xs:
            continue
        axes.errorbar(
            xs, medians, yerr=[lows, highs], marker="o", capsize=3, label=label
        )
        drawn = True
    if not drawn:
        plt.close(figure)
        return False
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("restore time, whole command (s)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def write_plots(record: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the restore plots of `record` into `out_dir`; return the files written."""
    cases = [c for c in record.get("restore", []) if "skipped" not in c]
    written = []
    files = [c for c in cases if c["kind"] == "file"]
    folders = [c for c in cases if c["kind"] == "folder"]
    size_png = out_dir / "restore_size.png"
    if plot(
        files,
        "size_bytes",
        "output size (bytes, one file)",
        "Restore of one cached file",
        size_png,
    ):
        written.append(size_png)
    files_png = out_dir / "restore_files.png"
    if plot(
        folders,
        "files",
        "files in the output folder (4 KiB each)",
        "Restore of a cached folder",
        files_png,
    ):
        written.append(files_png)
    return written


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print(__doc__, file=sys.stderr)
        return 2
    record = json.loads(Path(argv[0]).read_text())
    out_dir = Path(argv[1]) if len(argv) == 2 else Path(argv[0]).parent
    for path in write_plots(record, out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
