"""Remote gc and experiment records, on file:// and the SeaweedFS S3 server.

Experiments are created without mounting: a base snapshot of the Git
commit and a result snapshot of a folder, recorded as a finished run.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from expfs.errors import UsageError
from expfs.experiments import (
    create_experiment,
    get_experiment,
    remove_experiment,
    update_experiment,
)
from expfs.remote.config import RemoteConfig, config_files
from expfs.remote.gc import gc_remote
from expfs.remote.records import RECORDS_DIR, pull_records, read_versions, uid_of
from expfs.remote.runs import ROOTS_DIR, push
from expfs.remote.transfer import Remote, Stats, object_rel
from expfs.store import Store
from expfs.store.trees import Digest, Kind
from expfs.tree.snapshot import snapshot_path
from expfs_cli.main import main
from tests.remote_servers import s3_options, seaweedfs

__all__ = ["seaweedfs"]


@pytest.fixture(params=["file", "s3"])
def remote_config(request: pytest.FixtureRequest, tmp_path: Path) -> RemoteConfig:
    if request.param == "file":
        return RemoteConfig("origin", f"file://{tmp_path / 'remote'}")
    server = request.getfixturevalue("seaweedfs")
    url = server.url(f"/{uuid.uuid4().hex}")
    return RemoteConfig("origin", url, options=s3_options(server))


@pytest.fixture
def remote(remote_config: RemoteConfig) -> Remote:
    return Remote(remote_config)


def make_experiment(
    store: Store, repo: Path, name: str, result_text: str, tmp_path: Path
) -> tuple[Digest, Digest]:
    """Create experiment `name` whose result contains one file; return (result, blob)."""
    create_experiment(store, str(repo), name, "HEAD")
    return set_result(store, name, result_text, tmp_path)


def set_result(
    store: Store, name: str, result_text: str, tmp_path: Path
) -> tuple[Digest, Digest]:
    """Record a new result snapshot for `name`, as a re-run would."""
    folder = tmp_path / "results" / uuid.uuid4().hex
    folder.mkdir(parents=True)
    (folder / "metrics.txt").write_text(result_text)
    result = Digest(snapshot_path(store, str(folder)))
    update_experiment(store, name, result=result, status="success")
    blob = store.get_tree(result)[0].digest
    return result, blob


def remote_files(remote: Remote, folder: str) -> set[str]:
    return {rel for rel, _ in remote.backend.walk_files(folder)}


def on_remote(remote: Remote, digest: str) -> bool:
    return remote.backend.exists(object_rel(digest))


def test_gc_keeps_objects_of_records(
    store: Store, repo: Path, remote: Remote, tmp_path: Path
) -> None:
    result, blob = make_experiment(store, repo, "a", "a-result", tmp_path)
    base = get_experiment(store, "a").base
    push(store, remote, ["a"], run_cache=False)
    remove_experiment(store, "a")

    # Another clone may still use the record, so gc keeps it and its objects.
    report = gc_remote(store, remote, grace_s=0)
    assert report.records_removed == []
    assert list(read_versions(remote, "a"))
    for digest in (base, result, blob):
        assert on_remote(remote, digest), digest


def test_gc_record_alone_keeps_snapshots(
    store: Store, repo: Path, remote: Remote, tmp_path: Path
) -> None:
    result, blob = make_experiment(store, repo, "a", "a-result", tmp_path)
    push(store, remote, ["a"], run_cache=False)
    remove_experiment(store, "a")
    # Root marks written by older versions of push go with their record,
    # so the record must keep its snapshots by itself.
    for rel in remote_files(remote, ROOTS_DIR):
        remote.backend.delete(rel)

    report = gc_remote(store, remote, grace_s=0)
    assert report.removed == 0
    assert on_remote(remote, result)
    assert on_remote(remote, blob)


def test_gc_removes_named_records(
    store: Store,
    repo: Path,
    remote: Remote,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a_result, a_blob = make_experiment(store, repo, "a", "a-result", tmp_path)
    b_result, b_blob = make_experiment(store, repo, "b", "b-result", tmp_path)
    base = get_experiment(store, "a").base
    push(store, remote, ["a", "b"], run_cache=False)
    remove_experiment(store, "a")
    remove_experiment(store, "b")
    records_before = remote_files(remote, RECORDS_DIR)

    preview = gc_remote(store, remote, grace_s=0, dry_run=True, experiments=["a"])
    assert [r.name for r in preview.records_removed] == ["a"]
    assert preview.removed == 2
    assert remote_files(remote, RECORDS_DIR) == records_before
    assert on_remote(remote, a_blob)

    report = gc_remote(store, remote, grace_s=0, experiments=["a"])
    assert [r.name for r in report.records_removed] == ["a"]
    assert report.removed == preview.removed
    assert read_versions(remote, "a") == {}
    assert not on_remote(remote, a_result)
    assert not on_remote(remote, a_blob)
    assert list(read_versions(remote, "b"))
    for digest in (base, b_result, b_blob):
        assert on_remote(remote, digest), digest

    # Pulling every record finds b only, with no warning about a.
    with caplog.at_level(logging.WARNING):
        created = pull_records(store, remote, [], Stats(), every=True)
    assert created == ["b"]
    assert caplog.records == []


def test_gc_unknown_record_name_fails(
    store: Store, repo: Path, remote: Remote, tmp_path: Path
) -> None:
    make_experiment(store, repo, "a", "a-result", tmp_path)
    push(store, remote, ["a"], run_cache=False)
    remove_experiment(store, "a")
    stray = Digest(store.put_bytes(b"nothing refers to this"))
    remote.push_objects(store, [(Kind.FILE, stray)], Stats())
    before = remote_files(remote, "")

    with pytest.raises(UsageError, match="no experiment record on remote") as info:
        gc_remote(store, remote, grace_s=0, experiments=["a", "nope*"])
    assert "'nope*'" in str(info.value)
    assert remote_files(remote, "") == before


def test_gc_removes_superseded_versions(
    store: Store, repo: Path, remote: Remote, tmp_path: Path
) -> None:
    old_result, old_blob = make_experiment(store, repo, "a", "first run", tmp_path)
    push(store, remote, ["a"], run_cache=False)
    new_result, new_blob = set_result(store, "a", "second run", tmp_path)
    push(store, remote, ["a"], run_cache=False)
    assert len(remote_files(remote, RECORDS_DIR)) == 2

    # Both versions are younger than the grace period, so both stay.
    young = gc_remote(store, remote, grace_s=3600)
    assert young.record_versions_removed == 0
    assert len(remote_files(remote, RECORDS_DIR)) == 2
    assert on_remote(remote, old_blob)

    report = gc_remote(store, remote, grace_s=0)
    assert report.record_versions_removed == 1
    assert len(remote_files(remote, RECORDS_DIR)) == 1
    assert read_versions(remote, "a")[uid_of(get_experiment(store, "a"))]
    assert not on_remote(remote, old_result)
    assert not on_remote(remote, old_blob)
    assert on_remote(remote, new_result)
    assert on_remote(remote, new_blob)


def test_gc_removes_markers_of_removed_records(
    store: Store, repo: Path, remote: Remote, tmp_path: Path
) -> None:
    result, blob = make_experiment(store, repo, "a", "a-result", tmp_path)
    base = get_experiment(store, "a").base
    push(store, remote, ["a"], run_cache=False)
    remove_experiment(store, "a")
    # Earlier versions of push marked every pushed snapshot as a root.
    for digest in (base, result):
        remote.backend.put_bytes(f"{ROOTS_DIR}/{digest}", b"")

    report = gc_remote(store, remote, grace_s=0, experiments=["a"])
    assert report.root_marks_removed == 2
    assert remote_files(remote, ROOTS_DIR) == set()
    for digest in (base, result, blob):
        assert not on_remote(remote, digest), digest


def test_cli_gc_remote_experiments(
    store: Store,
    repo: Path,
    remote_config: RemoteConfig,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config_files(store.root).add(remote_config, default=True)
    remote = Remote(remote_config)
    make_experiment(store, repo, "sweep-1", "one", tmp_path)
    make_experiment(store, repo, "sweep-2", "two", tmp_path)
    make_experiment(store, repo, "keep", "three", tmp_path)
    uid = uid_of(get_experiment(store, "sweep-1"))
    push(store, remote, [], run_cache=False)
    for name in ("sweep-1", "sweep-2", "keep"):
        remove_experiment(store, name)
    gc = ["-C", str(repo), "gc", "--remote", "origin", "--grace", "0"]
    capsys.readouterr()

    assert main([*gc, "--experiments", "sweep-*", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would remove experiment record sweep-1@{uid[:12]}" in out
    assert "would remove experiment record sweep-2@" in out
    assert "keep@" not in out
    assert "would remove 2 experiment records, 0 older record versions" in out
    assert sorted(read_versions(remote, "sweep-1")) == [uid]

    assert main([*gc, "--experiments", "sweep-1"]) == 0
    out = capsys.readouterr().out
    assert f"removed experiment record sweep-1@{uid[:12]}" in out
    assert "removed 1 experiment record, 0 older record versions" in out
    assert read_versions(remote, "sweep-1") == {}
    assert list(read_versions(remote, "sweep-2"))

    assert main([*gc, "--experiments", "sweep-1"]) == 2
    err = capsys.readouterr().err
    assert "no experiment record on remote" in err
    assert "'sweep-1'" in err

    assert main([*gc, "--experiments", "*"]) == 0
    assert main([*gc, "--experiments", "*", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "has no experiment records, so nothing was removed" in err
