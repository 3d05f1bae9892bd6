"""Bad command-line input: each is rejected with the value named and the fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from expfs.errors import UsageError
from expfs.gitio import check_new_branch
from expfs.store import Store
from expfs_cli.main import main

BAD_NUMBERS = [
    (["gc", "--grace", "-1"], "'-1' is negative"),
    (["gc", "--grace", "soon"], "'soon' is not a finite number"),
    (["gc", "--grace", "nan"], "'nan' is not a finite number"),
    (["gc", "--remote", "origin", "--grace", "-0.5"], "'-0.5' is negative"),
    (["exp", "run", "-j", "0"], "'0' is invalid: give 1 or more"),
    (["exp", "run", "--jobs", "-3"], "'-3' is invalid"),
    (["exp", "run", "-j", "two"], "'two' is not a whole number"),
    (["exp", "run", "--max-experiments", "0"], "'0' is invalid"),
    (["queue", "start", "-j", "-1"], "'-1' is invalid"),
    (["push", "-j", "0"], "'0' is invalid"),
    (["pull", "--jobs", "x"], "'x' is not a whole number"),
    (["exp", "promote", "e", "-b", "b", "--max-git-mib", "-2"], "'-2' is negative"),
    (["exp", "promote", "e", "-b", "b", "--max-git-mib", "inf"], "'inf' is not"),
    (["exp", "show", "--precision", "0"], "'0' is out of range: give 1 to 17"),
    (["exp", "diff", "--precision", "18"], "'18' is out of range"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_NUMBERS)
def test_numeric_option_rejected(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    option = argv[-2]
    assert f"argument {option}" in err or f"/{option}:" in err or f"{option}/" in err


@pytest.fixture
def in_repo(store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    """The test's store, with the current folder at its repository root."""
    monkeypatch.chdir(os.path.dirname(store.root))
    return store


def test_remote_jobs_option_rejected(
    in_repo: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = Path(in_repo.root) / "config"
    url = f"file://{tmp_path}/remote"
    assert main(["remote", "add", "origin", url, "-o", "jobs=-1"]) == 2
    err = capsys.readouterr().err
    assert "invalid option jobs='-1'" in err
    assert "1 or more" in err
    assert not config.exists()


def test_remote_jobs_in_config_file_rejected(
    in_repo: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = Path(in_repo.root) / "config"
    config.write_text(
        f'[core]\nremote = "origin"\n[remote.origin]\nurl = "file://{tmp_path}/r"\n'
        '[remote.origin.options]\njobs = "many"\n'
    )
    assert main(["push"]) == 2
    err = capsys.readouterr().err
    assert f"in {config}" in err
    assert "invalid option jobs='many'" in err


BAD_NAMES = [
    ("a b", "it contains a space"),
    ("/a", "it starts or ends with '/'"),
    ("a/", "it starts or ends with '/'"),
    ("a/b", "it contains '/'"),
    ("a..b", "it contains '..'"),
    ("a@b", "it contains '@'"),
    ("@", "it is '@'"),
    ("", "it is empty"),
    ("a~1", "it contains '~'"),
    ("a:b", "it contains ':'"),
    ("a.lock", "ends with '.lock'"),
    ("a.", "it ends with '.'"),
    (".a", "starts with '.'"),
    ("-a", "it starts with '-'"),
    ("a\tb", "control character"),
]


@pytest.mark.parametrize(("name", "rule"), BAD_NAMES)
def test_exp_new_rejects_name(
    in_repo: Store, name: str, rule: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["exp", "new", "--", name]) == 2
    err = capsys.readouterr().err
    assert f"invalid experiment name {name!r}: " in err
    assert rule in err
    assert main(["exp", "list"]) == 0
    assert name not in capsys.readouterr().out.split()


@pytest.mark.parametrize(
    ("name", "rule"), [(n, r) for n, r in BAD_NAMES if "'/'" not in r and "@" not in r]
)
def test_promote_rejects_branch(repo: Path, name: str, rule: str) -> None:
    with pytest.raises(UsageError) as error:
        check_new_branch(str(repo), name, None)
    assert f"invalid branch name {name!r}" in error.value.message
    assert rule in error.value.message


def test_promote_accepts_branch_with_slash(repo: Path) -> None:
    check_new_branch(str(repo), "exp/lr-0.1", "v1.0")


def test_promote_rejects_tag(repo: Path) -> None:
    with pytest.raises(UsageError) as error:
        check_new_branch(str(repo), "good", "v 1")
    assert "invalid tag name 'v 1': it contains a space" in error.value.message


BAD_URLS = [
    ("file://relative/path", "'relative' would be read as a host name"),
    ("file://relative/path", "write file:///relative/path"),
    ("relative/path", "give an absolute path, file:///abs/path"),
    ("relative/path", "(such as "),
    ("file:relative", "invalid remote URL 'file:relative'"),
    ("file://localhost/srv/x", "'localhost' would be read as a host name"),
    ("bogus://host/path", "fsspec knows no protocol 'bogus'"),
    ("s3:///path", "it names no bucket"),
    ("sftp:///path", "it names no host"),
    ("sftp://host:99999/path", "the port is not a number from 0 to 65535"),
    ("sftp://host:port/path", "the port is not a number"),
]


@pytest.mark.parametrize(("url", "message"), BAD_URLS)
def test_remote_add_rejects_url(
    in_repo: Store, url: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = Path(in_repo.root).parent
    before = sorted(str(p) for p in repo.rglob("*"))
    assert main(["remote", "add", "origin", url]) == 2
    assert main(["remote", "add", "--project", "origin", url]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert sorted(str(p) for p in repo.rglob("*")) == before


def test_remote_add_absolute_path(
    in_repo: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "remote"
    assert main(["remote", "add", "origin", str(folder)]) == 0
    assert f"added remote origin (file://{folder})" in capsys.readouterr().out
