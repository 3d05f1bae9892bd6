"""Write the "Restore" section of bench/RESULTS.md from one run's record."""

from __future__ import annotations

import os
import re
import statistics
from pathlib import Path
from typing import Any

from bench.restore.data import FILE_BYTES_IN_FOLDERS, size_label
from bench.restore.measure import format_seconds, pair_ratios, summarize
from bench.restore.restore_cases import LIKE_FOR_LIKE, TOOL_LABELS, TOOL_ORDER
from bench.restore.workspace import WORKSPACE_TOOLS

SECTION = "## Restore"
BASELINE = "expfs-checkout"
MOUNT = "expfs-mount"
INTRO = """\
# Benchmark results

Each section is written by one script under `bench/`, run from the project
root with the development environment. A script rewrites only its own
section. Compare the ratios rather than the absolute times.
"""


def cell(result: dict[str, Any] | None, key: str = "command_s") -> str:
    if result is None:
        return "–"
    if result["status"] != "ok":
        return result["status"]
    summary = summarize(result[key])
    if summary is None:
        return "–"
    return f"{format_seconds(summary.median)} ({format_seconds(summary.low)}–{format_seconds(summary.high)})"


def median_ratio(
    numerator: dict[str, Any] | None, denominator: dict[str, Any] | None
) -> float | None:
    if not numerator or not denominator:
        return None
    if numerator["status"] != "ok" or denominator["status"] != "ok":
        return None
    ratios = pair_ratios(numerator["command_s"], denominator["command_s"])
    return statistics.median(ratios) if ratios else None


def ratio_text(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 0.1:
        return f"{value:.2g}×"
    return f"{value:.1f}×" if value < 100 else f"{value:.0f}×"


def table(
    header: list[str], rows: list[list[str]], align_right_from: int = 1
) -> list[str]:
    marks = ["---" if i < align_right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def restore_tables(cases: list[dict[str, Any]]) -> list[str]:
    lines = [
        "Restore of a cached stage's output, whole command (`expfs repro` and",
        "`dvc repro` start their program; `cp` copies the original output),",
        "median (min–max) in a warm page cache:",
        "",
    ]
    header = ["output", *(TOOL_LABELS[name] for name in TOOL_ORDER)]
    rows = []
    for case in cases:
        if "skipped" in case:
            rows.append([case["label"], *(["skipped"] * len(TOOL_ORDER))])
            continue
        rows.append(
            [case["label"], *(cell(case["tools"].get(name)) for name in TOOL_ORDER)]
        )
    lines += table(header, rows)
    lines += ratio_table(cases, MOUNT)
    lines += like_for_like_table(cases)
    lines += [
        "",
        "`expfs repro` whole command against the same restore timed inside one process (`Repro.run()`, no start-up):",
        "",
    ]
    rows = []
    for case in cases:
        result = case["tools"].get(BASELINE)
        if "skipped" in case or not result:
            continue
        rows.append([case["label"], cell(result), cell(result, "in_process_s")])
    lines += table(["output", "`expfs repro`", "in-process"], rows)
    return lines


def like_for_like_table(cases: list[dict[str, Any]]) -> list[str]:
    """Tabulate each DVC link type's time over expfs's with the same link type."""
    measured = [c for c in cases if "skipped" not in c]
    rows = []
    for case in measured:
        tools = case["tools"]
        ratios = [
            median_ratio(tools.get(dvc), tools.get(expfs))
            for expfs, dvc in LIKE_FOR_LIKE.items()
        ]
        rows.append([case["label"], *(ratio_text(r) for r in ratios)])
    header = [
        "output",
        *(f"{TOOL_LABELS[d]} / {TOOL_LABELS[e]}" for e, d in LIKE_FOR_LIKE.items()),
    ]
    return [
        "",
        "In a plain checkout, like for like: DVC's time divided by expfs's with the "
        "same link type in the same run (above 1: expfs is faster), median over the "
        "runs. Default is `reflink,copy` for both, which is a copy on ext4:",
        "",
        *table(header, rows),
    ]


def ratio_table(cases: list[dict[str, Any]], baseline: str) -> list[str]:
    """Tabulate each tool's time over `baseline`'s, taken run by run."""
    measured = [c for c in cases if "skipped" not in c]
    if not any(c["tools"].get(baseline, {}).get("status") == "ok" for c in measured):
        return []
    others = [name for name in TOOL_ORDER if name != baseline]
    rows = []
    for case in measured:
        tools = case["tools"]
        ratios = [median_ratio(tools.get(n), tools.get(baseline)) for n in others]
        rows.append([case["label"], *(ratio_text(r) for r in ratios)])
    return [
        "",
        f"Each tool's time divided by {TOOL_LABELS[baseline]}'s in the same run "
        "(above 1: it is slower), median over the runs:",
        "",
        *table(["output", *(TOOL_LABELS[n] for n in others)], rows),
    ]


def modes_lines(cases: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "Permission bits of the restored files against the originals (a tool that changes them still counts, and its time is kept):",
        "",
    ]
    rows = []
    for name in TOOL_ORDER:
        problems = [
            c["tools"][name]["mode_problem"]
            for c in cases
            if name in c.get("tools", {})
            and c["tools"][name]["status"] == "ok"
            and not c["tools"][name]["modes_kept"]
        ]
        measured = any(
            name in c.get("tools", {}) and c["tools"][name]["status"] == "ok"
            for c in cases
        )
        if not measured:
            continue
        rows.append([TOOL_LABELS[name], "no: " + problems[0] if problems else "yes"])
    return lines + table(["tool", "modes kept"], rows, align_right_from=2)


def noop_lines(cases: list[dict[str, Any]]) -> list[str]:
    found = next((c["noop_s"] for c in cases if "noop_s" in c), None)
    if not found:
        return []
    ratio = pair_ratios(found["dvc"], found["expfs"])
    expfs, dvc = summarize(found["expfs"]), summarize(found["dvc"])
    rows = []
    if expfs:
        rows.append(["`expfs repro`", format_seconds(expfs.median), "1"])
    if dvc:
        rows.append(
            [
                "`dvc repro`",
                format_seconds(dvc.median),
                ratio_text(statistics.median(ratio)) if ratio else "–",
            ]
        )
    return [
        "",
        "`repro` with nothing to do (the lock file matches), each program's start-up floor:",
        "",
        *table(["command", "median", "ratio"], rows),
    ]


def find_case(
    cases: list[dict[str, Any]], kind: str, amount: int
) -> dict[str, Any] | None:
    """Find a file case by size, or a folder case of 4 KiB files by count."""
    key = "size_bytes" if kind == "file" else "files"
    return next(
        (
            c
            for c in cases
            if c["kind"] == kind
            and c[key] == amount
            and "skipped" not in c
            and (
                kind == "file"
                or c.get("file_bytes", FILE_BYTES_IN_FOLDERS) == FILE_BYTES_IN_FOLDERS
            )
        ),
        None,
    )


def target_rows(record: dict[str, Any]) -> list[list[str]]:
    cases = [c for c in record.get("restore", []) if "skipped" not in c]
    rows = []
    mount_medians = [
        statistics.median(c["tools"][MOUNT]["command_s"])
        for c in cases
        if c["tools"].get(MOUNT, {}).get("status") == "ok"
        and c["tools"][MOUNT]["command_s"]
    ]
    if mount_medians:
        spread = max(mount_medians) / min(mount_medians)
        flat = (
            f"largest median {spread:.2f}× the smallest",
            "met" if spread <= 1.2 else "not met",
        )
    else:
        reason = next(
            (c["tools"][MOUNT]["reason"] for c in cases if MOUNT in c["tools"]), ""
        )
        flat = f"pending: {reason}" if reason else "not measured", "not measured"
    rows.append(
        [
            "expfs restore in a mount flat (within 20 %) over every output measured above",
            *flat,
        ]
    )
    slower = []
    compared = 0
    for case in cases:
        for expfs, dvc in LIKE_FOR_LIKE.items():
            ratio = median_ratio(case["tools"].get(dvc), case["tools"].get(expfs))
            if ratio is None:
                continue
            compared += 1
            if ratio <= 1:
                slower.append(
                    f"{case['label']}: {TOOL_LABELS[expfs]} vs {TOOL_LABELS[dvc]} "
                    f"({ratio:.2f}×)"
                )
    if compared == 0:
        checkout, met = "not measured", "not measured"
    elif slower:
        checkout, met = "slower or equal: " + "; ".join(slower), "not met"
    else:
        checkout, met = "faster in all", "met"
    rows.append(
        [
            "expfs in a plain checkout faster than DVC with each link type, like "
            f"for like (default, copy, hardlink, symlink), at every size ({compared} pairs)",
            checkout,
            met,
        ]
    )
    rows.append(target_10k(cases))
    rows += workspace_targets(record.get("workspace", []))
    return rows


def target_10k(cases: list[dict[str, Any]]) -> list[str]:
    case = find_case(cases, "folder", 10_000)
    goal = "cache-hit `expfs repro` of 10,000 files in a mount under 0.13 s, ≥100× DVC copy, ≥30× DVC hardlink"
    if case is None:
        return [goal, "not measured (no 10,000-file case in this run)", "not measured"]
    tools = case["tools"]
    mount = tools.get(MOUNT)
    if mount and mount["status"] == "ok" and mount["command_s"]:
        median = statistics.median(mount["command_s"])
        copy = median_ratio(tools.get("dvc-copy"), mount) or 0
        hard = median_ratio(tools.get("dvc-hardlink"), mount) or 0
        met = median < 0.13 and copy >= 100 and hard >= 30
        return [
            goal,
            f"{format_seconds(median)}, {ratio_text(copy)} DVC copy, {ratio_text(hard)} DVC hardlink",
            "met" if met else "not met",
        ]
    checkout = tools.get(BASELINE)
    note = ""
    if checkout and checkout["status"] == "ok":
        copy = median_ratio(tools.get("dvc-copy"), checkout)
        hard = median_ratio(tools.get("dvc-hardlink"), checkout)
        note = f"; in a plain checkout {cell(checkout)}, {ratio_text(copy)} DVC copy, {ratio_text(hard)} DVC hardlink"
    return [goal, f"mount pending{note}", "not measured"]


def workspace_targets(bases: list[dict[str, Any]]) -> list[list[str]]:
    goal = "workspace creation under 50 ms at 100,000 files (record only, base already snapshotted); time until the mount responds measured apart"
    base = next((b for b in bases if b["files"] == 100_000), None)
    if base is None:
        return [
            [goal, "not measured (no 100,000-file base in this run)", "not measured"]
        ]
    tools = base["tools"]
    inproc = tools["expfs-create-in-process"]
    if inproc["status"] != "ok" or not inproc["seconds"]:
        return [[goal, f"{inproc['status']}: {inproc['reason']}", "not measured"]]
    median = statistics.median(inproc["seconds"])
    text = (
        f"in-process {format_seconds(median)}, `expfs exp new` {wcell(tools['expfs-exp-new'])}, "
        f"mount {wcell(tools['expfs-mount'])}"
    )
    return [[goal, text, "met" if median < 0.05 else "not met"]]


def wcell(result: dict[str, Any]) -> str:
    if result["status"] != "ok":
        return result["status"]
    summary = summarize(result["seconds"])
    if summary is None:
        return "–"
    return f"{format_seconds(summary.median)} ({format_seconds(summary.low)}–{format_seconds(summary.high)})"


def earlier_run_lines(earlier_runs: dict[str, dict[str, str]]) -> list[str]:
    """Say which tables below come from an earlier run, and which run."""
    names = {"restore": "restore", "workspace": "workspace", "readback": "read-back"}
    lines = []
    for part, run in earlier_runs.items():
        lines += [
            "",
            f"The {names.get(part, part)} table below is kept from an earlier run, "
            f"not repeated in this one: `{run['command']}`, {run['date']}, "
            f"expfs {run['expfs']}.",
        ]
    return lines


def workspace_lines(bases: list[dict[str, Any]]) -> list[str]:
    if not bases:
        return []
    names = list(bases[0]["tools"])
    lines = [
        "",
        "New workspace from a committed base of N files of 4 KiB, median (min–max):",
        "",
    ]
    header = ["base", *(WORKSPACE_TOOLS.get(n, n) for n in names)]
    rows = [
        [f"{b['files']:,} files", *(wcell(b["tools"][n]) for n in names)] for b in bases
    ]
    lines += table(header, rows)
    reasons = sorted(
        {
            f"{b['tools'][n]['label']}: {b['tools'][n]['reason']}"
            for b in bases
            for n in names
            if b["tools"][n]["reason"]
        }
    )
    lines += [""] + [f"- {reason}" for reason in reasons] if reasons else []
    return lines


def readback_lines(readback: dict[str, Any] | None) -> list[str]:
    if not readback:
        return []
    times = readback["seconds"]
    size = readback["size_bytes"]
    lines = [
        "",
        f"Reading every byte of a {size_label(size)} stored file, 1 MiB reads, cold (its pages dropped with `posix_fadvise`) and warm:",
        "",
    ]
    rows = []
    for temperature in ("cold", "warm"):
        native = summarize(times[f"native-{temperature}"])
        mount = summarize(times[f"mount-{temperature}"])
        ratio = pair_ratios(
            times[f"mount-{temperature}"], times[f"native-{temperature}"]
        )
        rows.append(
            [
                temperature,
                f"{format_seconds(native.median)} ({size / native.median / (1 << 30):.2f} GiB/s)"
                if native
                else "–",
                f"{format_seconds(mount.median)} ({size / mount.median / (1 << 30):.2f} GiB/s)"
                if mount
                else readback["mount_status"],
                ratio_text(statistics.median(ratio)) if ratio else "–",
            ]
        )
    lines += table(
        ["cache", "native ext4", "through the mount", "mount / native"], rows
    )
    if readback["mount_reason"]:
        lines += ["", f"- mount: {readback['mount_reason']}"]
    return lines


def reasons_lines(cases: list[dict[str, Any]]) -> list[str]:
    reasons = sorted(
        {
            f"{TOOL_LABELS[name]}, {c['label']}: {r['status']}: {r['reason']}"
            for c in cases
            for name, r in c.get("tools", {}).items()
            if r["status"] != "ok"
        }
        | {f"{c['label']}: skipped: {c['skipped']}" for c in cases if "skipped" in c}
    )
    if not reasons:
        return []
    # One pending reason usually repeats for every case: show each once.
    shown: list[str] = []
    seen: set[str] = set()
    for reason in reasons:
        key = re.sub(r", [^:]*:", ":", reason, count=1)
        if key not in seen:
            seen.add(key)
            shown.append(reason)
    return [
        "",
        "Tools not measured, and why:",
        "",
        *(f"- {reason[:400]}" for reason in shown),
    ]


def large_note(record: dict[str, Any]) -> str:
    """Name the cases measured with fewer runs (`--large-reps`), if any."""
    config = record["config"]
    fewer = [
        item.get("label") or f"base of {item['files']:,} files"
        for item in [*record.get("restore", []), *record.get("workspace", [])]
        if "reps" in item and item["reps"] != config["reps"]
    ]
    if not fewer:
        return ""
    return f" ({config['large_reps']} run(s), no warm-up, for {', '.join(fewer)})"


def render(record: dict[str, Any], plots: list[Path], results_path: Path) -> str:
    machine = record["machine"]
    config = record["config"]
    cases = record.get("restore", [])
    lines = [
        SECTION,
        "",
        f"`{record['command']}`, {machine['date']}: each figure is the median of "
        f"{config['reps']} run(s) after {config['warmups']} warm-up run(s), with min and max"
        f"{large_note(record)}. "
        "Tools run one after another inside each run, and every ratio is taken between two tools of the same run, then its median shown. "
        "Each pipeline tool first restores variant A, then the tiny variant B, untimed, so its timed restore of A replaces its own output: "
        "tools of one program share a repository, and a copy that follows another tool's links needs fresh memory, which on this virtual machine took up to 12 s per GiB. "
        "Every restore is checked against the original output (BLAKE3 of each file, following links; paths; permission bits) before its time counts, and a stage whose command runs instead of being restored fails the tool.",
        "",
        f"Machine: {machine['cores']} cores ({machine['cpu']}), {machine['memory']} RAM, {machine['filesystem']}, "
        f"Linux {machine['kernel']}, Python {machine['python']}, DVC {machine['dvc']}, expfs {machine['expfs']}. "
        f"Load average at the start {machine['load']}, at the end {record.get('load_end', '?')}: {record.get('load_note', '')}",
        "",
    ]
    if cases:
        lines += restore_tables(cases) + modes_lines(cases) + noop_lines(cases)
    lines += earlier_run_lines(record.get("earlier_runs", {}))
    lines += workspace_lines(record.get("workspace", []))
    lines += readback_lines(record.get("readback"))
    lines += [
        "",
        "Targets:",
        "",
        *table(
            ["target", "measured", "status"], target_rows(record), align_right_from=3
        ),
    ]
    lines += reasons_lines(cases)
    if plots:
        lines += [""] + [
            f"![{p.stem}]({os.path.relpath(p, results_path.parent)})" for p in plots
        ]
    return "\n".join(lines) + "\n"


def write_section(results_path: Path, section: str) -> None:
    """Replace the Restore section of `results_path`, keeping every other section."""
    text = results_path.read_text() if results_path.exists() else INTRO
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    results_path.write_text(text.rstrip("\n") + "\n")
