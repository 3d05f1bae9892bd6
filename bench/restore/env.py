"""The programs under test and the environments they run in."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.restore.measure import ToolPending, run_quiet

# DVC releases this benchmark was written against; 3.x keeps the run-cache
# and `exp run --temp` behaviour it measures.
DVC_REQUIREMENT = "dvc>=3,<4"
EXPFS = str(Path(sys.executable).with_name("expfs"))
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "expfs-bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "expfs-bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}


def base_env() -> dict[str, str]:
    """Return the caller's environment with a Git identity added, for git, expfs and cp."""
    return {**os.environ, **GIT_IDENTITY}


def dvc_env(home: Path) -> dict[str, str]:
    """Build an environment that keeps DVC off the network and out of the user's config.

    DVC reads and writes config, site cache and analytics state under these
    folders, and sends analytics unless DVC_NO_ANALYTICS is set.
    """
    folders = {
        "HOME": home,
        "XDG_CONFIG_HOME": home / "config",
        "XDG_CACHE_HOME": home / "cache",
        "DVC_SITE_CACHE_DIR": home / "site-cache",
        "DVC_GLOBAL_CONFIG_DIR": home / "global-config",
        "DVC_SYSTEM_CONFIG_DIR": home / "system-config",
    }
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return {
        **base_env(),
        **{name: str(path) for name, path in folders.items()},
        "DVC_NO_ANALYTICS": "1",
    }


def install_dvc(venv: Path) -> Path:
    """Return the `dvc` program of `venv`, creating the venv and installing DVC first."""
    program = venv / "bin" / "dvc"
    if program.exists():
        return program
    print(f"installing {DVC_REQUIREMENT} into {venv} (about 40 s)", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [
                str(venv / "bin" / "pip"),
                "install",
                "-q",
                "--disable-pip-version-check",
                DVC_REQUIREMENT,
            ],
            check=True,
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(venv, ignore_errors=True)
        raise ToolPending(f"installing {DVC_REQUIREMENT} failed: {exc}") from exc
    return program


def version_of(argv: list[str], env: dict[str, str] | None = None) -> str:
    try:
        return run_quiet(argv, env=env).strip().splitlines()[-1]
    except Exception as exc:  # noqa: BLE001 - a version is only reported
        return f"unknown ({exc})"


def expfs_version(project: Path) -> str:
    from importlib.metadata import version

    commit = subprocess.run(
        ["git", "-C", str(project), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    dirty = subprocess.run(
        [
            "git",
            "-C",
            str(project),
            "status",
            "--porcelain",
            "--untracked-files=no",
            "expfs",
            "cli",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    state = " with uncommitted changes" if dirty else ""
    return f"{version('expfs')} (commit {commit}{state}, {install_kind()})"


def install_kind() -> str:
    """Say how the measured expfs is installed: an editable install slows every start.

    pip records `dir_info.editable` in the `direct_url.json` of a package it
    installed from a folder.
    """
    import json
    import sysconfig
    from importlib.metadata import distributions

    # The environment's own folder, not the expfs.egg-info that the project
    # folder holds when the benchmark runs from it.
    purelib = sysconfig.get_paths()["purelib"]
    found = list(distributions(name="expfs", path=[purelib]))
    if not found:
        return "not installed"
    text = found[0].read_text("direct_url.json")
    editable = bool(text and json.loads(text).get("dir_info", {}).get("editable"))
    if editable:
        return "editable install, whose import hook every command start pays"
    return "installed as users install it, not editable"


def memory_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)
    return 0.0


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def filesystem_of(path: Path) -> str:
    out = subprocess.run(
        ["df", "--output=fstype", str(path)], capture_output=True, text=True
    ).stdout.split()
    return out[-1] if out else "unknown"


def machine(work: Path, dvc: str, project: Path) -> dict[str, str]:
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu_model(),
        "memory": f"{memory_gib():.0f} GiB",
        "kernel": platform.release(),
        "filesystem": filesystem_of(work),
        "python": platform.python_version(),
        "dvc": dvc,
        "expfs": expfs_version(project),
        "date": time.strftime("%Y-%m-%d"),
        "load": load_average(),
    }


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def free_inodes(path: Path) -> int:
    return os.statvfs(path).f_favail
