"""Tune state files cut short by a killed driver: found, and put back from the staging copy.

The files are written in Ray's formats (pickle; cloudpickle, which writes the same protocol-5
pickle stream, under a ``.json`` name; JSON) and Ray's own layout:
``<ray temp>/session_*/artifacts/<session>/<experiment>/driver_artifacts``. Ray itself is not
imported here: a test process that imports it before ``init_ray`` breaks later in-process
searches (ray_runtime.init_ray). The same path on a real search and kill is in test_faults.py.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from tsearch.errors import TsearchError
from tsearch.search.tune_state import broken, intact, mend

SESSION = "2026-11-30_14-25-34"


def _write_state(folder: Path, session: str = SESSION) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        f"experiment_state-{session}.json": json.dumps(
            {"trial_data": [["{}", "{}"]] * 50, "runner_data": {"x": 1}}).encode(),
        f"searcher-state-{session}.pkl": pickle.dumps({"trials": list(range(2000))}),
        f"search_gen_state-{session}.json": pickle.dumps({"counter": 2, "total": 2},
                                                         protocol=5),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def _staging(ray_temp: Path, rel: str = "killed", session: str = SESSION) -> Path:
    return ray_temp / "session_2026-11-30_14-25-30_1_2" / "artifacts" / session / rel / \
        "driver_artifacts"


@pytest.mark.parametrize("name", ["experiment_state-x.json", "searcher-state-x.pkl",
                                  "search_gen_state-x.json"])
def test_intact_reads_each_format_to_its_end(tmp_path, name):
    data = _write_state(tmp_path / "w", "x")[name]
    path = tmp_path / name
    path.write_bytes(data)
    assert intact(path)
    for cut in (len(data) - 1, len(data) // 2, 1, 0):
        path.write_bytes(data[:cut])
        assert not intact(path), cut


def test_nothing_broken_nothing_mended(tmp_path):
    _write_state(tmp_path / "killed")
    assert broken(tmp_path / "killed") == []
    assert mend(tmp_path / "killed", "killed", tmp_path / "ray", "killed") == ([], [])


def test_a_cut_file_is_put_back_with_its_session_from_staging(tmp_path):
    exp, ray_temp = tmp_path / "store" / "killed", tmp_path / "ray"
    files = _write_state(exp)
    staged = _write_state(_staging(ray_temp))
    # The storage holds an older experiment state (Ray copied it before the searcher's).
    older = json.dumps({"trial_data": [], "runner_data": {"x": 0}}).encode()
    (exp / f"experiment_state-{SESSION}.json").write_bytes(older)
    cut = f"searcher-state-{SESSION}.pkl"
    (exp / cut).write_bytes(files[cut][:100])
    assert [p.name for p in broken(exp)] == [cut]

    found, put_back = mend(exp, "killed", ray_temp, "killed")
    assert found == [cut]
    assert sorted(put_back) == sorted(staged)  # the set one save wrote together
    for name, data in staged.items():
        assert (exp / name).read_bytes() == data
    assert broken(exp) == [] and not list(exp.glob(".*.mend"))


def test_the_newest_intact_staging_copy_wins_and_other_experiments_are_ignored(tmp_path):
    exp, ray_temp = tmp_path / "store" / "s1" / "confirm", tmp_path / "ray"
    files = _write_state(exp)
    cut = f"searcher-state-{SESSION}.pkl"
    (exp / cut).write_bytes(b"")
    _write_state(_staging(ray_temp, rel="s1"))  # the search phase's folder: another experiment
    confirm = _staging(ray_temp, rel="s1/confirm")
    _write_state(confirm)
    (confirm / cut).write_bytes(files[cut][:10])  # cut there too (a kill mid-save)
    with pytest.raises(TsearchError, match="--warm-start s1"):
        mend(exp, "s1/confirm", ray_temp, "s1")
    other = ray_temp / "session_2026-11-30_15-00-00_1_3" / "artifacts" / SESSION / "s1" / \
        "confirm" / "driver_artifacts"
    _write_state(other)
    assert mend(exp, "s1/confirm", ray_temp, "s1")[0] == [cut]
    assert (exp / cut).read_bytes() == files[cut]


def test_no_staging_copy_stops_in_one_line(tmp_path):
    exp = tmp_path / "store" / "killed"
    files = _write_state(exp)
    name = f"experiment_state-{SESSION}.json"
    (exp / name).write_bytes(files[name][:-3])
    for ray_temp in (None, tmp_path / "absent"):
        with pytest.raises(TsearchError) as err:
            mend(exp, "killed", ray_temp, "killed")
        text = str(err.value)
        assert "\n" not in text and name in text and "cannot resume" in text
    assert (exp / name).read_bytes() == files[name][:-3]  # left as it was
