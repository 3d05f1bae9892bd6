"""exp show, exp diff and exp plot as a user runs them: through `main()`,
subprocesses and, at the end, on experiments made by a real `exp run`."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from expfs.experiments import Experiment, list_experiments
from expfs.store import Store
from expfs_cli.main import main
from tests.test_report import BASE_COMMIT, put_record, sweep_records, write_pipeline

EXPFS = [sys.executable, "-m", "expfs"]


@pytest.fixture(autouse=True)
def restore_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    # `-C DIR` changes the working directory; monkeypatch undoes it.
    monkeypatch.chdir(os.getcwd())


@pytest.fixture
def swept(repo: Path, store: Store) -> Store:
    write_pipeline(repo)
    sweep_records(store)
    return store


def run_cli(
    cwd: Path, *args: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """Run `expfs ARGS` in-process from `cwd`; return (status, stdout, stderr)."""
    try:
        code = main(["-C", str(cwd), *args])
    except SystemExit as exc:
        # argparse rejects a bad option value before any command runs.
        assert isinstance(exc.code, int)
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def records(store: Store) -> list[bytes]:
    return [experiment.to_json() for experiment in list_experiments(store)]


# -- exp show --------------------------------------------------------------------


def test_show_plain_text(
    repo: Path, swept: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(repo, "exp", "show", capsys=capsys)
    assert code == 0
    assert err == ""
    lines = out.splitlines()
    assert lines[0].split() == [
        "name",
        "status",
        "created",
        "lr",
        "depth",
        "score",
        "eval.acc",
    ]
    assert [line.split()[0] for line in lines[1:]] == [
        "workspace",
        "exp-0",
        "exp-1",
        "exp-2",
        "exp-3",
    ]
    assert "\x1b[" not in out


def test_show_rich_on_terminal(
    repo: Path,
    swept: Store,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, _ = run_cli(repo, "exp", "show", capsys=capsys)
    assert code == 0
    assert "exp-3" in out
    assert "eval.acc" in out
    # rich draws box characters that the plain text table never uses.
    assert "─" in out or "━" in out


def test_show_json(
    repo: Path, swept: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(repo, "exp", "show", "--json", capsys=capsys)
    assert code == 0
    document = json.loads(out)
    assert [item["name"] for item in document][0] == "workspace"
    assert document[0]["status"] == "baseline"
    assert document[4]["base"] == BASE_COMMIT
    assert document[4]["metrics"]["score.json"]["score"] == pytest.approx(0.6)
    assert set(document[1]) >= {
        "name",
        "status",
        "base",
        "created",
        "params",
        "metrics",
    }


def test_show_csv_sorted(
    repo: Path, swept: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(
        repo,
        "exp",
        "show",
        "--csv",
        "--sort-by",
        "score",
        "--sort-order",
        "desc",
        capsys=capsys,
    )
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["name"] for row in rows] == [
        "workspace",
        "exp-3",
        "exp-1",
        "exp-0",
        "exp-2",
    ]
    assert rows[1]["created"].endswith("+00:00")


def test_show_markdown_precision(
    repo: Path, swept: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    put_record(
        swept, "long", created=1_900_000_000.0, metrics={"score.json": {"score": 2 / 3}}
    )
    code, out, _ = run_cli(
        repo, "exp", "show", "--md", "--precision", "2", capsys=capsys
    )
    assert code == 0
    assert out.splitlines()[0].startswith("| name | status | created |")
    assert "| score |" in out.splitlines()[0]
    assert "| 0.67 |" in out


def test_show_all_params(
    repo: Path, swept: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = run_cli(repo, "exp", "show", "--all-params", capsys=capsys)
    assert "train.epochs" in out.splitlines()[0]
    _, out, _ = run_cli(repo, "exp", "show", capsys=capsys)
    assert "train.epochs" not in out


def test_show_formats_exclusive(
    repo: Path, swept: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["-C", str(repo), "exp", "show", "--json", "--csv"])
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_show_no_experiments(
    repo: Path, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(repo, "exp", "show", "--json", capsys=capsys)
    assert code == 0
    assert [item["name"] for item in json.loads(out)] == ["workspace"]


def test_show_without_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    code, out, err = run_cli(tmp_path, "exp", "show", capsys=capsys)
    assert code != 0
    assert out == ""
    assert "expfs init" in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--sort-by", "accuracy"], "unknown param or metric 'accuracy'"),
        (["--precision", "0"], "argument --precision: '0' is out of range: give 1"),
        (["--precision", "40"], "'40' is out of range: give 1 to 17"),
    ],
)
def test_show_bad_input(
    repo: Path,
    swept: Store,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    expected: str,
) -> None:
    before = records(swept)
    code, out, err = run_cli(repo, "exp", "show", *args, capsys=capsys)
    assert code == 2
    assert out == ""
    assert expected in err
    assert "Traceback" not in err
    assert records(swept) == before


def test_show_unknown_sort_lists_known(
    repo: Path, swept: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, err = run_cli(repo, "exp", "show", "--sort-by", "acc", capsys=capsys)
    assert "Known metrics: score, eval.acc." in err
    assert "Known params: lr, depth, train.epochs." in err


def test_show_reads_each_record_once(
    repo: Path,
    store: Store,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for index in range(500):
        put_record(
            store,
            f"exp-{index:03d}",
            created=1_800_000_000.0 + index,
            params={"params.yaml": {"lr": index / 1000, "depth": index % 7}},
            metrics={"score.json": {"score": index / 500}},
        )
    decoded = []
    real_from_json = Experiment.from_json.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Experiment], data: bytes) -> Experiment:
        decoded.append(data)
        result: Experiment = real_from_json(cls, data)
        return result

    monkeypatch.setattr(Experiment, "from_json", classmethod(counting))
    code, out, _ = run_cli(repo, "exp", "show", "--json", capsys=capsys)
    assert code == 0
    assert len(json.loads(out)) == 501
    assert len(decoded) == 500


# -- exp diff --------------------------------------------------------------------


def test_diff_text(
    repo: Path, swept: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(repo, "exp", "diff", "exp-0", "exp-3", capsys=capsys)
    assert code == 0
    rows = [line.split() for line in out.splitlines()]
    assert ["param", "lr", "0.1", "0.2", "+0.1"] in rows
    assert ["metric", "score", "0.2", "0.6", "+0.4"] in rows


def test_diff_json_files(
    repo: Path, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    from expfs.tree.snapshot import snapshot_path

    folder = repo / "out"
    folder.mkdir()
    (folder / "model.txt").write_text("a\n")
    old = snapshot_path(store, str(folder))
    (folder / "model.txt").write_text("b\n")
    new = snapshot_path(store, str(folder))
    put_record(store, "a", created=1, result=old, metrics={"m.json": {"acc": 0.5}})
    put_record(store, "b", created=2, result=new, metrics={"m.json": {"acc": 0.7}})
    code, out, _ = run_cli(repo, "exp", "diff", "a", "b", "--json", capsys=capsys)
    assert code == 0
    document = json.loads(out)
    assert document["files"] == [{"status": "M", "path": "model.txt"}]
    assert document["metrics"][0]["delta"] == pytest.approx(0.2)


def test_diff_markdown(
    repo: Path, swept: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(repo, "exp", "diff", "exp-1", "exp-3", "--md", capsys=capsys)
    assert code == 0
    assert out.startswith("| kind | name | exp-1 | exp-3 | change |")
    assert "| param | depth | 2 | 3 | +1 |" in out


def test_diff_unknown_experiment(
    repo: Path, swept: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    before = records(swept)
    code, out, err = run_cli(repo, "exp", "diff", "exp-0", "exp-9", capsys=capsys)
    assert code == 1
    assert out == ""
    assert "no experiment named 'exp-9'" in err
    assert records(swept) == before


# -- exp plot --------------------------------------------------------------------


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plot_bars_png(
    repo: Path, swept: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    output = tmp_path / "plots" / "score.png"
    code, out, _ = run_cli(
        repo, "exp", "plot", "score", "-o", str(output), capsys=capsys
    )
    assert code == 0
    assert output.read_bytes().startswith(PNG_SIGNATURE)
    assert f"wrote {output} (4 rows)" in out
    assert "exp-2" in out


def test_plot_scatter_html(
    repo: Path, swept: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    output = tmp_path / "score.png"
    code, _, _ = run_cli(
        repo,
        "exp",
        "plot",
        "score",
        "--x",
        "lr",
        "-o",
        str(output),
        "--html",
        capsys=capsys,
    )
    assert code == 0
    page = (tmp_path / "score.html").read_text()
    assert "data:image/png;base64,iVBORw0KGgo" in page
    assert "<th>score</th>" in page
    assert "<td>exp-3</td>" in page
    assert 'src="http' not in page


def test_plot_default_output_name(
    repo: Path, swept: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    code, _, _ = run_cli(repo, "exp", "plot", "score.json:eval.acc", capsys=capsys)
    assert code == 0
    assert (repo / "exp-plot-eval.acc.png").read_bytes().startswith(PNG_SIGNATURE)


def test_plot_unknown_metric(
    repo: Path, swept: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    before = records(swept)
    code, out, err = run_cli(repo, "exp", "plot", "lr", capsys=capsys)
    assert code == 2
    assert out == ""
    assert "unknown metric 'lr'" in err
    assert "Known metrics: score, eval.acc." in err
    assert not list(repo.glob("*.png"))
    assert records(swept) == before


def test_plot_without_values(
    repo: Path, store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    put_record(store, "a", created=1, metrics={"m.json": {"note": "text"}})
    code, _, err = run_cli(repo, "exp", "plot", "note", capsys=capsys)
    assert code == 2
    assert "no experiment has a number for 'note'" in err


def test_plot_without_matplotlib(
    repo: Path,
    swept: Store,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A None entry in sys.modules makes `import matplotlib` raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = run_cli(repo, "exp", "plot", "score", capsys=capsys)
    assert code == 1
    assert "pip install 'expfs[plots]'" in err
    assert not list(repo.glob("*.png"))


# -- start-up and a real sweep ----------------------------------------------------


def test_help_skips_heavy_imports() -> None:
    probe = (
        "import sys\n"
        "from expfs_cli.main import main\n"
        "try:\n"
        "    main(['exp', 'show', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = ('rich', 'matplotlib', 'yaml', 'expfs.report')\n"
        "print(' '.join(m for m in heavy if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert "--sort-by" in proc.stdout
    assert proc.stdout.splitlines()[-1] == ""


@pytest.mark.fuse
@pytest.mark.slow
def test_show_after_real_sweep(repo: Path) -> None:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("needs /dev/fuse and fusermount3 (apt-get install fuse3)")
    (repo / "dvc.yaml").write_text(
        "stages:\n  train:\n    cmd: python3 train.py\n    deps: [train.py]\n"
        "    params: [lr, depth]\n    outs: [model.txt]\n"
        "    metrics: [{score.json: {cache: false}}]\n"
    )
    (repo / "train.py").write_text(
        "import json, yaml\n"
        "p = yaml.safe_load(open('params.yaml'))\n"
        "open('model.txt', 'w').write(f\"{p['lr']} {p['depth']}\\n\")\n"
        "json.dump({'score': p['lr'] * p['depth']}, open('score.json', 'w'))\n"
    )
    (repo / "params.yaml").write_text("lr: 0.1\ndepth: 2\n")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "pipeline"], check=True)

    def expfs(*args: str) -> str:
        proc = subprocess.run(
            [*EXPFS, *args], cwd=repo, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"expfs {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    expfs("init")
    expfs("exp", "run", "-S", "lr=0.1,0.2", "-S", "depth=2,3", "-j", "2")
    document = json.loads(expfs("exp", "show", "--json"))
    by_name = {item["name"]: item for item in document}
    assert document[0]["status"] == "baseline"
    experiments = [item for item in document if item["status"] != "baseline"]
    assert len(experiments) == 4
    scores = sorted(item["metrics"]["score.json"]["score"] for item in experiments)
    assert scores == pytest.approx([0.2, 0.3, 0.4, 0.6])
    assert {item["status"] for item in experiments} == {"success"}

    best = max(experiments, key=lambda item: item["metrics"]["score.json"]["score"])
    worst = min(experiments, key=lambda item: item["metrics"]["score.json"]["score"])
    diff = json.loads(expfs("exp", "diff", worst["name"], best["name"], "--json"))
    changed = {(item["status"], item["path"]) for item in diff["files"]}
    assert ("M", "model.txt") in changed
    assert ("M", "score.json") in changed
    assert by_name[best["name"]]["params"]["params.yaml"] == {"lr": 0.2, "depth": 3}

    markdown = expfs("exp", "show", "--md")
    assert "| score |" in markdown.splitlines()[0]


def test_cli_precision_default_matches() -> None:
    from expfs.report import DEFAULT_PRECISION
    from expfs_cli.report_cmds import DEFAULT_PRECISION as CLI_DEFAULT

    assert CLI_DEFAULT == DEFAULT_PRECISION


@pytest.mark.slow
def test_bench_show_quick(tmp_path: Path) -> None:
    project = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [
            sys.executable,
            str(project / "bench" / "bench_show.py"),
            "--quick",
            "--experiments",
            "20",
            "--work",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=project,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| `expfs exp show --json` |" in proc.stdout
    assert "wrote the" not in proc.stdout
    assert list(tmp_path.iterdir()) == []
