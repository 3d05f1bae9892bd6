"""Fixtures shared by every test: an isolated Git identity, repositories, stores.

Tests that mount must mount below their `tmp_path`: `make test` fails a run
that leaves any mount under the pytest base folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from expfs.store import Store, init_store
from expfs.store.lmdbenv import close_environment

# A job that a script starts in the background (`cmd &`, nohup) ignores
# SIGINT, and exec keeps that for every child. The tests that stop expfs
# with SIGINT would then time out, so restore the default here.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True, scope="session")
def isolated_git(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Give Git a fixed identity and no user or system configuration."""
    home = tmp_path_factory.mktemp("git-home")
    config = home / "gitconfig"
    config.write_text("[init]\n\tdefaultBranch = main\n")
    saved = dict(os.environ)
    os.environ.update(
        GIT_CONFIG_GLOBAL=str(config),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="expfs tests",
        GIT_AUTHOR_EMAIL="tests@example.invalid",
        GIT_COMMITTER_NAME="expfs tests",
        GIT_COMMITTER_EMAIL="tests@example.invalid",
    )
    yield
    os.environ.clear()
    os.environ.update(saved)


def git(repo: Path | str, *args: str) -> str:
    """Run git in `repo` and return its standard output."""
    proc = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    )
    return proc.stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A Git repository with one commit holding README."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    (root / "README").write_text("seed\n")
    git(root, "add", "README")
    git(root, "commit", "-qm", "seed")
    return root


@pytest.fixture
def store(repo: Path) -> Iterator[Store]:
    """An initialized store in `repo`, closed after the test."""
    created, _ = init_store(str(repo))
    yield created
    close_environment(os.path.join(created.root, "index"))


@pytest.fixture(autouse=True, scope="session")
def private_server_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Give the expfs server of this session its own folder; stop it at the end."""
    folder = tmp_path_factory.mktemp("server")
    folder.chmod(0o700)
    saved = os.environ.get("EXPFS_SERVER_DIR")
    os.environ["EXPFS_SERVER_DIR"] = str(folder)
    yield folder
    if saved is None:
        os.environ.pop("EXPFS_SERVER_DIR", None)
    else:
        os.environ["EXPFS_SERVER_DIR"] = saved
    stop_servers(folder)


def stop_servers(folder: Path) -> None:
    """Stop the expfs servers whose pid files are in `folder` (they were started here)."""
    for pid_file in folder.glob("server-*.pid"):
        pid = int(pid_file.read_text())
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if str(folder).encode() not in cmdline:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
