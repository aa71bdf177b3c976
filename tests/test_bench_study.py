"""bench/cml_study.py: variants resolve to presets and --set items, runs are reused, the table."""

from __future__ import annotations

import argparse
import json

import pytest

from bench import cml_study


def _study(tmp_path):
    args = argparse.Namespace(out=str(tmp_path), threads=1, epochs=7, patience=3)
    return cml_study.Study(args)


def test_variants_combine_in_order_and_unknown_names_are_refused():
    presets, sets = cml_study.items_of("lightgcn+dim64+official")
    assert presets == ["official"]
    assert sets == ["propagation=linear", "readout=mean", "init=normal", "reg_on=ego", "dim=64"]
    assert cml_study.items_of("dim32+dim64")[1] == ["dim=32", "dim=64"]  # later wins in cml's --set
    with pytest.raises(SystemExit, match="unknown variant"):
        cml_study.items_of("lightgcn+nope")


def test_commands_use_the_datasets_base_presets_for_cml_only(tmp_path):
    study = _study(tmp_path)
    (tmp_path / "data" / "tmall-mbcgcn").mkdir(parents=True)
    (tmp_path / "data" / "tmall-mbcgcn" / "meta.json").write_text("{}")
    cml = study.command("tmall-mbcgcn", "history+hitem", 2024)
    assert [cml[i + 1] for i, a in enumerate(cml) if a == "--preset"] == ["authors-tmall", "paper"]
    sets = [cml[i + 1] for i, a in enumerate(cml) if a == "--set"]
    assert sets == ["monitor_protocol=full", "history=auto", "history_item_weights=true", "epochs=7", "patience=3"]
    assert cml[cml.index("--seed") + 1] == "2024"
    base = study.command("tmall-mbcgcn", "cascading-rank", 2023)
    assert "--preset" not in base and "model=cascading-rank" in base


def test_finished_runs_make_the_table(tmp_path):
    study = _study(tmp_path)
    for seed, (v, t) in {2023: (0.2, 0.3), 2024: (0.4, 0.5)}.items():
        rd = study.run_dir("retailrocket", "dim64", seed)
        rd.mkdir(parents=True)
        (rd / "summary.json").write_text(json.dumps({
            "best_epoch": 2, "epochs_run": 3, "best": {"valid": {"hr@10": v, "ndcg@10": v / 2}},
            "test_at_best": {"hr@10": t, "ndcg@10": t / 2}}))
        (rd / "metrics.jsonl").write_text("\n".join(json.dumps({"epoch": e, "seconds": 1.5}) for e in (1, 2, 3)))
    rows = study.finished()
    assert [r["seed"] for r in rows] == [2023, 2024] and rows[0]["seconds_to_best"] == 3.0
    table = cml_study.table(rows)
    assert "| retailrocket | dim64 | 2 | 0.3000 ± 0.1414 | 0.1500 ± 0.0707 | 0.4000 ± 0.1414 |" in table


@pytest.mark.parametrize("name, variant, preset", [("retailrocket", "light+retailrocket-preset", ["retailrocket"]),
                                                   ("tmall-mbcgcn", "light+mbcgcn-preset", ["tmall", "mbcgcn"])])
def test_the_tuned_preset_variants_are_the_presets(tmp_path, name, variant, preset):
    """On top of the study's base, the tuned-preset variants resolve to what `cml train --preset` gives
    (save the study's epoch cap and patience), so their ablations are the presets' ablations."""
    from cml_dgl.train.config import resolve

    study = _study(tmp_path)
    (tmp_path / "data" / name).mkdir(parents=True)
    (tmp_path / "data" / name / "meta.json").write_text("{}")
    argv = study.command(name, variant, 2023)
    presets = [argv[i + 1] for i, a in enumerate(argv) if a == "--preset"]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    mine = resolve(presets, None, [s for s in sets if not s.startswith(("epochs=", "patience="))])
    theirs = resolve(preset)
    assert {k: (mine[k], theirs[k]) for k in theirs if mine[k] != theirs[k]} == {}
