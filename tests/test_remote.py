"""Remotes over file://: config, transfers, entries, gc and the CLI."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from expfs.errors import UsageError
from expfs.remote.config import (
    RemoteConfig,
    RemoteExists,
    config_files,
    redact_url,
)
from expfs.remote.entries import entry_name, entry_rel, read_entry
from expfs.remote.gc import gc_remote
from expfs.remote.inputs import key_of, make_inputs, save_inputs
from expfs.remote.runs import remote_lookup, remote_record
from expfs.remote.transfer import CorruptRemoteObject, Remote, Stats, object_rel
from expfs.runcache import OutputRecord, RunCache, RunRecord
from expfs.store import Store, init_store
from expfs.store.lmdbenv import close_environment
from expfs.store.trees import Digest, Kind
from expfs.tree.snapshot import snapshot_path
from expfs_cli.main import main
from tests.conftest import git


def make_run(
    store: Store, folder: Path, files: dict[str, str], n: int = 1
) -> tuple[RunRecord, dict]:
    """Write `files` under folder/out, store them and return a record and its inputs."""
    out = folder / "out"
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
    digest = snapshot_path(store, str(out))
    size = sum(len(t) for t in files.values())
    inputs = make_inputs(
        "python gen.py", {"gen.py": "ab" * 32}, {"params.yaml": {"n": n}}, ["out"]
    )
    record = RunRecord(
        key=key_of(inputs),
        stage="gen",
        outputs=[OutputRecord("out", int(Kind.DIRECTORY), digest, 0o755, size)],
    )
    return record, inputs


def file_remote(path: Path, **options: str) -> Remote:
    return Remote(RemoteConfig("origin", f"file://{path}", options=dict(options)))


@pytest.fixture
def second_store(tmp_path: Path):
    root = tmp_path / "clone"
    root.mkdir()
    git(root, "init", "-q")
    created, _ = init_store(str(root))
    yield created
    close_environment(os.path.join(created.root, "index"))


# -- config ----------------------------------------------------------------------


def test_config_add_list_remove(store: Store) -> None:
    files = config_files(store.root)
    files.add(
        RemoteConfig("origin", "s3://bucket/x", options={"endpoint_url": "http://h"}),
        default=True,
    )
    files.add(
        RemoteConfig("laptop", "file:///srv/x", read_only=True, local=True),
        default=False,
    )
    with pytest.raises(RemoteExists, match="'origin' already exists"):
        files.add(RemoteConfig("origin", "s3://bucket/y"), default=False)
    remotes = files.remotes()
    assert remotes["origin"].options == {"endpoint_url": "http://h"}
    assert remotes["laptop"].read_only
    assert remotes["laptop"].local
    assert files.default_name() == "origin"
    assert os.path.exists(os.path.join(os.path.dirname(store.root), ".expfs.toml"))
    assert os.stat(os.path.join(store.root, "config")).st_mode & 0o777 == 0o600
    assert files.remove("origin") == [files.shared]
    assert "origin" not in files.remotes()
    assert files.default_name() is None


def test_config_rejects_password_in_shared_file(store: Store) -> None:
    files = config_files(store.root)
    with pytest.raises(UsageError, match="--local"):
        files.add(RemoteConfig("origin", "sftp://me:hunter2@host/x"), default=False)
    files.add(
        RemoteConfig("origin", "sftp://me:hunter2@host/x", local=True), default=False
    )
    assert files.remotes()["origin"].display_url == "sftp://me:***@host/x"


def test_redact_url_keeps_port_and_user() -> None:
    assert (
        redact_url("sftp://u:p%40ss@127.0.0.1:2222/a")
        == "sftp://u:***@127.0.0.1:2222/a"
    )
    assert redact_url("s3://bucket/a") == "s3://bucket/a"


def test_config_rejects_bad_names_and_urls(store: Store) -> None:
    files = config_files(store.root)
    with pytest.raises(UsageError, match="invalid remote name"):
        files.add(RemoteConfig("a/b", "file:///x"), default=False)
    with pytest.raises(UsageError, match="invalid remote URL"):
        files.add(RemoteConfig("a", "relative/path"), default=False)


# -- objects ----------------------------------------------------------------------


def test_push_then_fetch_round_trip(
    store: Store, second_store: Store, tmp_path: Path
) -> None:
    record, _ = make_run(store, tmp_path / "w", {"a": "1" * 100, "b": "2" * 50})
    remote = file_remote(tmp_path / "remote")
    root = (Kind.DIRECTORY, record.outputs[0].digest)
    stats = Stats()
    remote.push_objects(store, [root], stats)
    assert stats.objects == 3
    again = Stats()
    remote.push_objects(store, [root], again)
    assert again.objects == 0
    assert again.present == 1
    fetched = Stats()
    remote.fetch_objects(second_store, [root], fetched)
    assert second_store.has_tree(root[1])
    for entry in second_store.get_tree(root[1]):
        assert second_store.verify_blob(entry.digest)


def test_corrupt_remote_object_is_rejected(
    store: Store, second_store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record, _ = make_run(store, tmp_path / "w", {"a": "1" * 100})
    remote = file_remote(tmp_path / "remote")
    tree = record.outputs[0].digest
    remote.push_objects(store, [(Kind.DIRECTORY, tree)], Stats())
    blob = store.get_tree(tree)[0].digest
    path = tmp_path / "remote" / object_rel(blob)
    os.chmod(path, 0o644)
    path.write_text("corrupt")
    with caplog.at_level(logging.WARNING), pytest.raises(CorruptRemoteObject) as info:
        remote.fetch_objects(second_store, [(Kind.DIRECTORY, tree)], Stats())
    assert blob in info.value.message
    assert "origin" in info.value.message
    assert not second_store.has_blob(blob)
    assert not second_store.has_tree(tree)
    assert os.listdir(second_store.tmp_dir) == []


# -- run-cache entries -----------------------------------------------------------------


def test_record_then_lookup_in_another_store(
    store: Store, second_store: Store, tmp_path: Path
) -> None:
    record, inputs = make_run(store, tmp_path / "w", {"a": "1" * 100})
    remote = file_remote(tmp_path / "remote")
    assert remote_record(store, remote, record, inputs)
    found = remote_lookup(second_store, remote, record.key, "gen")
    assert found is not None
    assert found.outputs == record.outputs
    assert RunCache(second_store).lookup(record.key, "gen") is not None


def test_lookup_rejects_entry_under_wrong_key(
    store: Store, second_store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record, inputs = make_run(store, tmp_path / "w", {"a": "1"})
    remote = file_remote(tmp_path / "remote")
    assert remote_record(store, remote, record, inputs)
    other_key = "cd" * 32
    source = tmp_path / "remote" / entry_rel(entry_name(record.key))
    target = tmp_path / "remote" / entry_rel(entry_name(other_key))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
    with caplog.at_level(logging.WARNING):
        assert remote_lookup(second_store, remote, other_key, "gen") is None
    assert "rejected run-cache entry" in caplog.text


def test_missing_object_behind_entry_is_a_miss(
    store: Store, second_store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record, inputs = make_run(store, tmp_path / "w", {"a": "1", "b": "2"})
    remote = file_remote(tmp_path / "remote")
    assert remote_record(store, remote, record, inputs)
    blob = store.get_tree(record.outputs[0].digest)[0].digest
    os.unlink(tmp_path / "remote" / object_rel(blob))
    with caplog.at_level(logging.WARNING):
        assert remote_lookup(second_store, remote, record.key, "gen") is None
    assert blob in caplog.text
    assert RunCache(second_store).get(record.key) is None


def test_entry_is_never_overwritten(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, inputs = make_run(store, tmp_path / "w1", {"a": "first"})
    second, _ = make_run(store, tmp_path / "w2", {"a": "second"})
    assert first.key == second.key
    remote = file_remote(tmp_path / "remote")
    assert remote_record(store, remote, first, inputs)
    with caplog.at_level(logging.WARNING):
        assert remote_record(store, remote, second, inputs)
    assert "non-deterministic stage gen" in caplog.text
    entry = read_entry(remote, first.key)
    assert entry is not None
    assert entry.record.outputs == first.outputs


def test_append_only_entries_pick_the_earliest(
    store: Store, second_store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, inputs = make_run(store, tmp_path / "w1", {"a": "first"})
    second, _ = make_run(store, tmp_path / "w2", {"a": "second"})
    remote = file_remote(tmp_path / "remote", entries="append-only")
    assert remote_record(store, remote, first, inputs)
    time.sleep(0.01)
    # A second writer that does not see the first entry appends its own.
    from expfs.remote import entries

    real = entries.read_entry
    entries.read_entry = lambda *a: None  # type: ignore[assignment]
    try:
        entries.publish_entry(remote, second, inputs)
    finally:
        entries.read_entry = real
    folder = tmp_path / "remote" / entries.appended_rel(entry_name(first.key))
    assert len(os.listdir(folder)) == 2
    chosen = read_entry(remote, first.key)
    assert chosen is not None
    assert chosen.record.outputs == first.outputs
    found = remote_lookup(second_store, remote, first.key, "gen")
    assert found is not None
    assert found.outputs == first.outputs


def test_salt_separates_generations(store: Store, tmp_path: Path) -> None:
    record, inputs = make_run(store, tmp_path / "w", {"a": "1"})
    assert remote_record(store, file_remote(tmp_path / "remote"), record, inputs)
    salted = file_remote(tmp_path / "remote", salt="v2")
    assert read_entry(salted, record.key) is None


def test_read_only_remote_is_never_written(store: Store, tmp_path: Path) -> None:
    record, inputs = make_run(store, tmp_path / "w", {"a": "1"})
    remote = Remote(RemoteConfig("ro", f"file://{tmp_path / 'remote'}", read_only=True))
    assert not remote_record(store, remote, record, inputs)
    assert not (tmp_path / "remote").exists()


def test_concurrent_pushers_of_one_key(store: Store, tmp_path: Path) -> None:
    """Two processes push different outputs under one run key at once."""
    remote_path = tmp_path / "remote"
    script = tmp_path / "push.py"
    script.write_text(PUSHER)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(tmp_path / f"repo{i}"),
                f"file://{remote_path}",
                str(i),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    pushed = [out.strip() for out, _ in results]
    assert sorted(pushed) == ["False", "True"] or pushed == ["True", "True"]
    runs = list((remote_path / "runs").rglob("*"))
    entry_files = [p for p in runs if p.is_file()]
    assert len(entry_files) == 1


PUSHER = f"""
import os, subprocess, sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from expfs.remote.config import RemoteConfig
from expfs.remote.entries import publish_entry
from expfs.remote.transfer import Remote, Stats
from expfs.remote.inputs import make_inputs, key_of
from expfs.runcache import OutputRecord, RunRecord
from expfs.store import init_store
from expfs.store.trees import Kind
import json
repo, url, n = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
options = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {{}}
repo.mkdir()
subprocess.run(["git", "init", "-q", str(repo)], check=True)
store, _ = init_store(str(repo))
digest = store.put_bytes(("output of writer " + n).encode())
inputs = make_inputs("cmd", {{}}, {{}}, ["out"])
record = RunRecord(key=key_of(inputs), stage="gen",
                   outputs=[OutputRecord("out", int(Kind.FILE), digest, 0o644, 17)])
remote = Remote(RemoteConfig("origin", url, options=options))
remote.push_objects(store, [(Kind.FILE, digest)], Stats())
print(publish_entry(remote, record, inputs))
"""


# -- gc ---------------------------------------------------------------------------------


def test_gc_keeps_reachable_and_young(store: Store, tmp_path: Path) -> None:
    record, inputs = make_run(store, tmp_path / "w", {"a": "1"})
    remote = file_remote(tmp_path / "remote")
    assert remote_record(store, remote, record, inputs)
    stray = store.put_bytes(b"nothing refers to this")
    remote.push_objects(store, [(Kind.FILE, Digest(stray))], Stats())
    report = gc_remote(store, remote, grace_s=3600)
    assert report.removed == 0
    assert report.too_new == 1
    old = time.time() - 7200
    os.utime(tmp_path / "remote" / object_rel(stray), (old, old))
    report = gc_remote(store, remote, grace_s=3600)
    assert report.removed == 1
    assert not (tmp_path / "remote" / object_rel(stray)).exists()
    assert read_entry(remote, record.key) is not None
    for entry in store.get_tree(record.outputs[0].digest):
        assert (tmp_path / "remote" / object_rel(entry.digest)).exists()


# -- CLI ----------------------------------------------------------------------------------


def test_cli_remote_commands(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    root = os.path.dirname(store.root)
    assert (
        main(
            [
                "-C",
                root,
                "remote",
                "add",
                "origin",
                "file:///tmp/x",
                "--default",
                "-o",
                "jobs=2",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "-C",
                root,
                "remote",
                "add",
                "mine",
                "sftp://u:hunter2@127.0.0.1/x",
                "--local",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["-C", root, "remote", "list"]) == 0
    listed = capsys.readouterr().out
    assert "origin\tfile:///tmp/x\t(default, local)\tjobs=2" in listed
    assert "hunter2" not in listed
    assert "sftp://u:***@127.0.0.1/x" in listed
    assert main(["-C", root, "remote", "remove", "origin"]) == 0
    assert main(["-C", root, "remote", "remove", "origin"]) == 2


def test_cli_push_to_read_only_remote_fails(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = os.path.dirname(store.root)
    assert (
        main(
            [
                "-C",
                root,
                "remote",
                "add",
                "ro",
                f"file://{tmp_path / 'r'}",
                "--read-only",
            ]
        )
        == 0
    )
    assert main(["-C", root, "push", "-r", "ro"]) == 2
    assert "read-only" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cli_remote_add_leaves_working_tree_alone(store: Store) -> None:
    root = os.path.dirname(store.root)
    before = git(root, "status", "--porcelain")
    assert (
        main(["-C", root, "remote", "add", "origin", "file:///tmp/x", "--default"]) == 0
    )
    assert git(root, "status", "--porcelain") == before
    assert not os.path.exists(os.path.join(root, ".expfs.toml"))
    assert (
        main(["-C", root, "remote", "add", "team", "file:///tmp/t", "--project"]) == 0
    )
    assert os.path.exists(os.path.join(root, ".expfs.toml"))
    assert config_files(store.root).default_name() == "origin"


def _config_bytes(root: str) -> dict[str, bytes | None]:
    found: dict[str, bytes | None] = {}
    for path in (
        os.path.join(root, ".expfs", "config"),
        os.path.join(root, ".expfs.toml"),
    ):
        found[path] = Path(path).read_bytes() if os.path.exists(path) else None
    return found


def test_cli_remote_add_rejects_existing_name(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    root = os.path.dirname(store.root)
    add = ["-C", root, "remote", "add"]
    assert main([*add, "origin", "sftp://u:hunter2@127.0.0.1/a", "--default"]) == 0
    before = _config_bytes(root)
    capsys.readouterr()

    assert main([*add, "origin", "file:///tmp/b", "-o", "jobs=2"]) == 2
    err = capsys.readouterr().err
    assert "remote 'origin' already exists in" in err
    assert os.path.join(".expfs", "config") in err
    assert "sftp://u:***@127.0.0.1/a" in err
    assert "hunter2" not in err
    assert "--force" in err
    assert _config_bytes(root) == before

    assert main([*add, "origin", "file:///tmp/b", "--force"]) == 0
    out = capsys.readouterr().out
    assert "replaced remote origin (sftp://u:***@127.0.0.1/a)" in out
    assert "with file:///tmp/b" in out
    files = config_files(store.root)
    assert files.remotes()["origin"].url == "file:///tmp/b"
    assert files.default_name() == "origin"


def test_cli_remote_add_across_config_files(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    root = os.path.dirname(store.root)
    add = ["-C", root, "remote", "add"]
    assert main([*add, "team", "file:///srv/team", "--project"]) == 0
    before = _config_bytes(root)
    capsys.readouterr()

    # A private remote of the same name would hide the committed one.
    assert main([*add, "team", "file:///tmp/mine"]) == 2
    err = capsys.readouterr().err
    assert "remote 'team' already exists in" in err
    assert ".expfs.toml" in err
    assert "file:///srv/team" in err
    assert _config_bytes(root) == before

    assert main([*add, "team", "file:///tmp/mine", "--force"]) == 0
    out = capsys.readouterr().out
    assert "overrides remote team (file:///srv/team) of" in out
    assert config_files(store.root).remotes()["team"].url == "file:///tmp/mine"

    # A committed remote of the same name stays hidden by the private one.
    assert main([*add, "team", "file:///srv/other", "--project", "--force"]) == 0
    out = capsys.readouterr().out
    assert "remote team in" in out
    assert "(file:///tmp/mine) still overrides it in this clone" in out
    assert config_files(store.root).remotes()["team"].url == "file:///tmp/mine"


def test_cli_remote_add_reports_default(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    root = os.path.dirname(store.root)
    add = ["-C", root, "remote", "add"]
    assert main([*add, "mine", "file:///tmp/mine", "--default"]) == 0
    capsys.readouterr()
    assert main([*add, "team", "file:///srv/team", "--project", "--default"]) == 0
    out = capsys.readouterr().out
    assert "the default remote of this clone stays mine" in out
    assert config_files(store.root).default_name() == "mine"

    assert main([*add, "other", "file:///tmp/other", "--default"]) == 0
    out = capsys.readouterr().out
    assert "default remote changed from mine to other" in out


def test_cli_push_summary_counts(
    store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = os.path.dirname(store.root)
    url = f"file://{tmp_path / 'r'}"

    def add_run(n: int) -> None:
        # Every run makes the same output, so its objects are shared.
        record, inputs = make_run(store, tmp_path / f"w{n}", {"a": "1", "b": "22"}, n)
        RunCache(store).record(record)
        save_inputs(store, record.key, inputs)

    def push_summary() -> str:
        assert main(["-C", root, "push", "-r", "origin", "--run-cache"]) == 0
        return capsys.readouterr().err

    add_run(1)
    add_run(2)
    assert main(["-C", root, "remote", "add", "origin", url]) == 0
    capsys.readouterr()
    size = r"\(\d+ B\)"
    took = r"in \d+\.\d\d s"

    first = push_summary()
    expected = rf"pushed 3 objects {size} and 2 run-cache entries, to origin \({url}\), {took}\n"
    assert re.fullmatch(expected, first), first

    add_run(3)
    second = push_summary()
    expected = (
        rf"pushed 0 objects \(0 B\) and 1 run-cache entry, to origin \({url}\), "
        rf"{took}; 1 object and 2 entries were already there\n"
    )
    assert re.fullmatch(expected, second), second
