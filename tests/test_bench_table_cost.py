"""bench/table_cost.py sums the epoch times a quality-table folder holds and projects the rest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import table_cost  # noqa: E402


def _run(folder: Path, seconds: list[float], finished: bool = True) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "seconds": s}) + "\n"
                                                  for e, s in enumerate(seconds, start=1)))
    if finished:
        (folder / "summary.json").write_text("{}")


def test_costs_are_summed_per_cell_and_projected_from_the_finished_runs(tmp_path):
    trials = tmp_path / "tune" / "rr" / "mf" / "trials"
    _run(trials / "0000", [10.0, 20.0], finished=False)  # pruned trials cost time too
    _run(trials / "0001", [30.0])
    runs = tmp_path / "runs" / "rr" / "mf"
    _run(runs / "paper-2023", [5.0, 5.0])
    _run(runs / "paper-2024", [7.0], finished=False)  # still running: not a finished run
    _run(runs / "honest-2023", [4.0])
    _run(runs / "honest-refit-2023", [100.0])  # not an honest run
    (tmp_path / "runs" / "rr" / "pop" / "paper-2023").mkdir(parents=True)
    rows = {r["model"]: r for r in table_cost.cell_costs(tmp_path, trials=20, seeds=3)}
    mf = rows["mf"]
    assert (mf["trials_done"], mf["tune_s"], mf["tune_projected_s"]) == (2, 60.0, 600.0)
    assert (mf["paper_done"], mf["honest_done"], mf["honest-refit_done"]) == (1, 1, 1)
    assert mf["runs_s"] == 114.0 and mf["runs_projected_s"] == 3 * (10.0 + 4.0 + 100.0)
    pop = rows["pop"]
    assert not pop["tuned"] and pop["tune_projected_s"] == 0.0 and pop["runs_projected_s"] is None


def test_a_protocol_without_a_finished_run_leaves_the_projection_open(tmp_path):
    _run(tmp_path / "runs" / "rr" / "mf" / "paper-2023", [5.0])
    (row,) = table_cost.cell_costs(tmp_path, trials=20, seeds=3)
    assert row["runs_s"] == 5.0 and row["runs_projected_s"] is None


def test_a_bad_metrics_line_names_the_file_and_line(tmp_path):
    folder = tmp_path / "runs" / "rr" / "mf" / "paper-2023"
    _run(folder, [1.0])
    with (folder / "metrics.jsonl").open("a") as fh:
        fh.write("not json\n")
    with pytest.raises(table_cost.CostError, match=r"metrics.jsonl, line 2: expected a JSON object"):
        table_cost.cell_costs(tmp_path, trials=20, seeds=3)


def test_the_script_refuses_a_folder_that_is_not_a_table(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "bench" / "table_cost.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no tune/ or runs/ folder" in done.stderr
