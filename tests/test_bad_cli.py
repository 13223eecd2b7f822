"""Every CLI mistake is one stderr line (exit 2 for bad input, no traceback), and nothing is
written where it should not be: no store made by a read-only command, no file overwritten
unasked, no credential printed.

Commands that read searches run against a real SQLite MLflow store built here with MLflow's own
client, tagged the way a search tags its runs (tsearch.names), instead of running a search.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from cli_harness import assert_one_line, run_cli

from tsearch import names

ROOT = Path(__file__).resolve().parents[1]
SEARCH = "grid1"
BEST_YAML = "timesteps:\n  sampler:\n    name: speed\n"


def _build_store(root: Path) -> str:
    """A finished two-method, two-seed search as tsearch leaves it in MLflow."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("tsearch", (root / "artifacts").as_uri())
    parent = client.create_run(exp, run_name=SEARCH, tags={
        names.TAG_KIND: names.KIND_SEARCH, names.TAG_SEARCH: SEARCH}).info.run_id
    best = root / names.ARTIFACT_BEST_CONFIG
    best.write_text(BEST_YAML)
    client.log_artifact(parent, str(best))
    client.log_metric(parent, names.SEARCH_BEST_FID, 40.0)
    for i, (method, seed) in enumerate([("uniform", 1), ("uniform", 2), ("speed", 1),
                                        ("speed", 2)]):
        run = client.create_run(exp, run_name=f"trial_{i}", tags={
            names.TAG_PARENT_RUN: parent, names.TAG_KIND: names.KIND_TRIAL,
            names.TAG_TRIAL_ID: f"trial_{i}", names.TAG_SEARCH: SEARCH}).info.run_id
        for key, value in {f"{names.PARAM_TRIAL}.method": method,
                           f"{names.PARAM_TRIAL}.train.seed": seed,
                           f"{names.PARAM_CONFIG}.timesteps.sampler.name": method,
                           f"{names.PARAM_CONFIG}.timesteps.weighting.name": "none",
                           f"{names.PARAM_CONFIG}.diffusion.schedule": "linear"}.items():
            client.log_param(run, key, value)
        for step, fid in ((200, 90.0 - 5 * i), (400, 60.0 - 5 * i)):
            client.log_metric(run, names.FID, fid, step=step)
            client.log_metric(run, names.TRAIN_FORWARDS, 3.0 * step, step=step)
        client.set_terminated(run)
    client.set_terminated(parent)
    return uri


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return _build_store(tmp_path_factory.mktemp("store"))


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    """An empty working directory, with no MLflow or Ray settings from the caller's shell."""
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS",
                "TSEARCH_STORAGE_PATH"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def _unwritable() -> Path:
    """A directory nobody (root included) can create files in."""
    if os.geteuid() != 0:
        locked = Path(tempfile.mkdtemp(prefix="tsearch-locked-"))
        locked.chmod(0o500)
        return locked
    try:  # sysfs refuses new files even to root
        fd, probe = tempfile.mkstemp(dir="/sys")
    except OSError:
        return Path("/sys")
    os.close(fd)
    os.unlink(probe)
    pytest.skip("no unwritable directory on this machine")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# --- 1. usage errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("args,fragments", [
    (["train", "--bogus"], ["error: No such option: --bogus", "(see tsearch train --help)"]),
    (["train", "--dryrun"], ["No such option: --dryrun", "did you mean --dry-run?"]),
    (["nosuchcmd"], ["No such command 'nosuchcmd'", "train, fid-ref, search", "tsearch --help"]),
    (["runs", "show"], ["Missing argument", "tsearch runs show --help"]),
    (["export", "best"], ["Missing option '--output'", "tsearch export best --help"]),
    (["timesteps", "show", "speed", "-T", "abc"], ["'--num-timesteps'", "valid integer"]),
    (["report", "x", "-o", "out", "--nope"], ["No such option: --nope"]),
])
def test_usage_error_is_one_line(capfd, here, args, fragments):
    result = run_cli(capfd, *args)
    assert_one_line(result, *fragments)
    assert result.out == "" and _listing(here) == []


@pytest.mark.parametrize("args,commands", [
    ([], "train, fid-ref, search, submit, report, runs, export, timesteps"),
    (["runs"], "list, show"),
    (["export"], "best"),
    (["timesteps"], "list, show"),
])
def test_missing_command_is_a_usage_error_not_help(capfd, here, args, commands):
    result = run_cli(capfd, *args)
    path = " ".join(["tsearch", *args])
    assert_one_line(result, f"{path} needs a command: {commands}", f"(see {path} --help)")
    assert result.out == ""  # the help is --help's job
    helped = run_cli(capfd, *args, "--help")
    assert helped.code == 0 and "Usage:" in helped.out and helped.err == ""


# --- 2. outputs: checked first, never overwritten unasked ---------------------------------------

def test_export_refuses_to_overwrite_without_force(capfd, here, store):
    target = here / "existing.yaml"
    target.write_bytes(b"mine: 1\n")
    result = run_cli(capfd, "export", "best", "-o", "existing.yaml", "--tracking-uri", store)
    assert_one_line(result, "existing.yaml exists", "--force")
    assert target.read_bytes() == b"mine: 1\n"
    forced = run_cli(capfd, "export", "best", "-o", "existing.yaml", "--force",
                     "--tracking-uri", store)
    assert forced.code == 0, forced.err
    assert target.read_text() == BEST_YAML


def test_export_writes_a_new_file_in_new_directories(capfd, here, store):
    result = run_cli(capfd, "export", "best", "-o", "new/dir/best.yml", "--tracking-uri", store)
    assert result.code == 0 and result.err == "", result.err
    assert (here / "new/dir/best.yml").read_text() == BEST_YAML
    assert f"best config of search {SEARCH}" in result.out
    # Still refused the second time: the file now exists.
    again = run_cli(capfd, "export", "best", "-o", "new/dir/best.yml", "--tracking-uri", store)
    assert_one_line(again, "exists", "--force")


@pytest.mark.parametrize("output,fragments", [
    ("best.txt", ["-o best.txt", "export writes YAML", ".yaml or .yml"]),
    ("best", ["-o best", ".yaml or .yml"]),
    ("some_file.txt/x.yaml", ["some_file.txt is a file, not a directory"]),
    ("adir", ["-o adir is a directory"]),
])
def test_export_refuses_a_bad_output_before_reading_the_store(capfd, here, store, output,
                                                              fragments):
    (here / "some_file.txt").write_bytes(b"keep")
    (here / "adir").mkdir()
    result = run_cli(capfd, "export", "best", "-o", output, "--tracking-uri", store)
    assert_one_line(result, *fragments)
    assert (here / "some_file.txt").read_bytes() == b"keep"
    assert _listing(here) == ["adir", "some_file.txt"]


def test_export_to_an_unwritable_place(capfd, here, store):
    target = _unwritable() / "best.yaml"
    result = run_cli(capfd, "export", "best", "-o", str(target), "--tracking-uri", store)
    assert_one_line(result, f"cannot write -o {target}", "not writable")
    assert not target.exists()


def test_report_output_that_is_a_file_is_refused(capfd, here, store):
    (here / "out").write_bytes(b"not a directory")
    result = run_cli(capfd, "report", SEARCH, "-o", "out", "--tracking-uri", store)
    assert_one_line(result, "-o out is a file")
    assert (here / "out").read_bytes() == b"not a directory"


def test_report_output_in_an_unwritable_place(capfd, here, store):
    target = _unwritable() / "report"
    result = run_cli(capfd, "report", SEARCH, "-o", str(target), "--tracking-uri", store)
    assert_one_line(result, "cannot write the report", "not writable")
    assert not target.exists()


@pytest.mark.parametrize("output,fragments", [
    ("plot.jpg", ["-o plot.jpg", "PNG", ".png"]),
    ("file.txt/x.png", ["file.txt is a file, not a directory"]),
])
def test_timesteps_show_refuses_a_bad_plot_path(capfd, here, output, fragments):
    (here / "file.txt").write_bytes(b"keep")
    result = run_cli(capfd, "timesteps", "show", "uniform", "-o", output)
    assert_one_line(result, *fragments)
    assert result.out == "" and _listing(here) == ["file.txt"]


def test_timesteps_show_to_an_unwritable_place(capfd, here):
    target = _unwritable() / "x.png"
    result = run_cli(capfd, "timesteps", "show", "uniform", "-o", str(target))
    assert_one_line(result, "cannot write -o", "not writable")
    assert result.out == ""


# --- 3. read-only commands never create a store -------------------------------------------------

@pytest.mark.parametrize("args", [
    ["runs", "list"],
    ["runs", "show", SEARCH],
    ["export", "best", "-o", "best.yaml"],
    ["report", SEARCH, "-o", "rep"],
])
def test_read_only_commands_create_no_store(capfd, here, args):
    result = run_cli(capfd, *args)
    assert_one_line(result, "no MLflow store at tsearch-runs/mlflow.db", "run a search first",
                    "--tracking-uri")
    assert _listing(here) == []


def test_missing_store_from_the_environment(capfd, here, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{here}/elsewhere/m.db")
    result = run_cli(capfd, "runs", "list")
    assert_one_line(result, f"no MLflow store at {here}/elsewhere/m.db")
    assert _listing(here) == []


def test_empty_and_foreign_sqlite_files_are_not_stores(capfd, here):
    import sqlite3

    (here / "empty.db").write_bytes(b"")
    conn = sqlite3.connect(here / "other.db")
    conn.execute("CREATE TABLE notes (x TEXT)")
    conn.commit()
    conn.close()
    before = (here / "other.db").read_bytes()
    result = run_cli(capfd, "runs", "list", "--tracking-uri", "sqlite:///empty.db")
    assert_one_line(result, "empty.db is an empty file")
    result = run_cli(capfd, "runs", "list", "--tracking-uri", "sqlite:///other.db")
    assert_one_line(result, "other.db is an SQLite database but not an MLflow store")
    assert (here / "empty.db").read_bytes() == b""
    assert (here / "other.db").read_bytes() == before
    assert _listing(here) == ["empty.db", "other.db"]


def test_reading_a_store_changes_nothing_in_it(capfd, here, store):
    db = here / "copy" / "mlflow.db"  # a copy no earlier test has read
    db.parent.mkdir()
    shutil.copyfile(store[len("sqlite:///"):], db)
    uri = f"sqlite:///{db}"
    before = (db.read_bytes(), _listing(db.parent))
    result = run_cli(capfd, "runs", "list", "--tracking-uri", uri)
    assert result.code == 0 and SEARCH in result.out, result.err
    result = run_cli(capfd, "runs", "show", SEARCH, "--tracking-uri", uri)
    assert result.code == 0 and "trial_3" in result.out, result.err
    assert (db.read_bytes(), _listing(db.parent)) == before  # no lock file, no new schema


# --- 4. a store URI that is not a store: one line, fast -----------------------------------------

@pytest.mark.parametrize("args", [["runs", "list"], ["report", "s", "-o", "rep"],
                                  ["export", "best", "-o", "b.yaml"]])
def test_garbage_sqlite_file_is_one_line_fast(capfd, here, args):
    junk = os.urandom(4096)
    (here / "garbage.db").write_bytes(junk)
    t0 = time.monotonic()
    result = run_cli(capfd, *args, "--tracking-uri", "sqlite:///garbage.db")
    assert_one_line(result, "garbage.db is not an SQLite database")
    assert time.monotonic() - t0 < 10
    assert (here / "garbage.db").read_bytes() == junk and _listing(here) == ["garbage.db"]


def test_directory_as_sqlite_store_is_one_line(capfd, here):
    (here / "somedir").mkdir()
    result = run_cli(capfd, "runs", "list", "--tracking-uri", "sqlite:///somedir")
    assert_one_line(result, "somedir is a directory", "sqlite:///somedir/mlflow.db")
    assert _listing(here) == ["somedir"]


@pytest.mark.parametrize("command", ["train", "search"])
def test_train_and_search_refuse_a_garbage_store_before_starting(capfd, here, command):
    (here / "garbage.db").write_bytes(b"\x00garbage" * 50)
    result = run_cli(capfd, command, str(ROOT / "experiments" / "smoke.yaml"), "--set",
                     "tracking.uri=sqlite:///garbage.db", "--set", "search.storage_path=ray")
    assert_one_line(result, "garbage.db is not an SQLite database", "--set tracking.uri=")
    assert _listing(here) == ["garbage.db"]


def test_check_sqlite_store_for_writers_and_readers(here):
    from tsearch.errors import ConfigError
    from tsearch.tracking.queries import check_sqlite_store

    (here / "d").mkdir()
    (here / "g.db").write_bytes(b"x" * 100)
    (here / "e.db").write_bytes(b"")
    for uri in ("sqlite:///new.db", "sqlite:///e.db", "http://h:5000", "sqlite:///:memory:"):
        check_sqlite_store(uri)  # a writer may create these
    with pytest.raises(ConfigError, match="is a directory.*--set tracking.uri=sqlite:///d/"):
        check_sqlite_store("sqlite:///d", option="--set tracking.uri=")
    with pytest.raises(ConfigError, match="not an SQLite database"):
        check_sqlite_store("sqlite:///g.db")
    with pytest.raises(ConfigError, match="no MLflow store at new.db"):
        check_sqlite_store("sqlite:///new.db", must_exist=True)
    assert _listing(here) == ["d", "e.db", "g.db"]


# --- 5 and 9. report options are checked before fetching; the error is the only line ----------

def test_report_unknown_seed_key_lists_the_searched_keys(capfd, here, store):
    result = run_cli(capfd, "report", SEARCH, "-o", "rep", "--seed-key", "no.such.key",
                     "--tracking-uri", store)
    assert_one_line(result, "--seed-key 'no.such.key'", "searched keys: method, train.seed")
    assert _listing(here) == []


def test_report_unknown_baseline_is_the_only_line(capfd, here, store):
    result = run_cli(capfd, "report", SEARCH, "-o", "rep", "--baseline", "nosuchrow",
                     "--tracking-uri", store)
    assert_one_line(result, "--baseline 'nosuchrow'", "rows: speed, uniform")
    assert "fetching" not in result.err and _listing(here) == []


def test_report_logs_one_progress_line_once_fetching_works(capfd, here, store):
    result = run_cli(capfd, "report", SEARCH, "-o", "rep", "--seed-key", "train.seed",
                     "--baseline", "uniform", "--tracking-uri", store)
    assert result.code == 0, result.err
    assert result.err_lines == [f"fetching trial runs of search '{SEARCH}' from {store}: 4/4"]
    assert "(4 trials, 2 cells in 1 block(s))" in result.out
    assert (here / "rep" / "report.md").is_file()


# --- 6. timesteps show at a small T -------------------------------------------------------------

def test_timesteps_show_speed_at_small_T(capfd, here):
    result = run_cli(capfd, "timesteps", "show", "speed", "-T", "20", "-o", "s.png")
    if result.code != 0:  # SpeeD's tau as an absolute index is another change's business
        assert_one_line(result, "tau")
        assert "eval.steps" not in result.err
        return
    assert "(T=20)" in result.out and (here / "s.png").is_file()


# --- 7. credentials in URIs are never printed ---------------------------------------------------

@pytest.mark.parametrize("args", [["runs", "list"], ["runs", "show", "x"],
                                  ["export", "best", "-o", "b.yaml"],
                                  ["report", "x", "-o", "rep"]])
def test_tracking_uri_password_is_masked(capfd, here, args):
    port = _free_port()
    uri = f"http://alice:s3cret@127.0.0.1:{port}"
    result = run_cli(capfd, *args, "--tracking-uri", uri)
    assert_one_line(result, f"http://127.0.0.1:{port} is unreachable", code=1)
    assert "s3cret" not in result.err + result.out and _listing(here) == []


def test_search_result_lines_mask_the_tracking_uri(capfd):
    from types import SimpleNamespace

    from tsearch.cli.main import _print_search_result

    capfd.readouterr()
    _print_search_result(SimpleNamespace(name="s", trials=[], seconds=1.0, parent_run_id="p",
                                         tracking_uri="http://alice:s3cret@10.9.8.7:5000"))
    out = capfd.readouterr().out
    assert "open http://alice:***@10.9.8.7:5000" in out and "s3cret" not in out


def test_submit_masks_the_job_server_password(capfd, here, monkeypatch):
    port = _free_port()
    monkeypatch.chdir(ROOT)
    result = run_cli(capfd, "submit", "experiments/smoke.yaml", "--address",
                     f"http://bob:hunter2@127.0.0.1:{port}", "--set",
                     "tracking.uri=http://alice:s3cret@10.9.8.7:5000", "--set",
                     "search.storage_path=/shared/ray")
    assert_one_line(result, f"bob:***@127.0.0.1:{port}", code=1)
    assert "hunter2" not in result.err and "s3cret" not in result.err


# --- 8. the local cluster script keeps the Ray token off command lines --------------------------

def test_cluster_script_passes_no_token_on_a_command_line():
    script = ROOT / "infra" / "local" / "cluster.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    start = text.index('cat > "$DIR/env" <<EOF')  # the env file (mode 600) may hold it
    body = text[:start] + text[text.index("\nEOF\n", start):]
    assert 'RAY_AUTH_TOKEN="$(' not in body and "RAY_AUTH_TOKEN=$(" not in body
    assert 'RAY_AUTH_TOKEN_PATH="$DIR/token"' in text and "env -u RAY_AUTH_TOKEN" in text
