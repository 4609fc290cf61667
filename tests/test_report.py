"""scripts/report.py: full-fine-tuning references by name suffix, and the intrinsic-dimension table with d90."""

import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("report_script", os.path.join(REPO, "scripts", "report.py"))
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def _run(name, task, method, score, metric="f1", d=None, **others):
    delta = {"method": method} if d is None else {"method": method, "d": d}
    m = {metric: score, **others}
    return {"_name": name, "task": task, "method": method, "main_metric": metric,
            "best_metrics": m, "metrics": m, "config": {"delta": delta},
            "best_step": 1, "train_steps": 1, "trainable_params": 10, "total_params": 100, "delta_bytes": 40,
            "steps_per_second": 1.0, "peak_rss_mb": 1.0}


ROWS = [
    _run("mrpc_full", "mrpc", "full", 0.90, accuracy=0.86),
    _run("sst2_full", "sst2", "full", 0.90, "accuracy"),
    _run("sst2_full_quick", "sst2", "full", 0.80, "accuracy"),
    _run("mrpc_frozen", "mrpc", "frozen", 0.81, accuracy=0.68),
    # MRPC is read on accuracy (F1 0.81 = the majority class would pass 90% of full's F1):
    # 90% of 0.86 = 0.774; d=1000 is the first to reach it (0.78), d=3000 dips below again
    _run("mrpc_said_d300", "mrpc", "said", 0.81, d=300, accuracy=0.70),
    _run("mrpc_said", "mrpc", "said", 0.84, d=1000, accuracy=0.78),
    _run("mrpc_said_d3000", "mrpc", "said", 0.85, d=3000, accuracy=0.77),
    _run("mrpc_did_d300", "mrpc", "did", 0.81, d=300, accuracy=0.60),
    _run("mrpc_did_d3000", "mrpc", "did", 0.82, d=3000, accuracy=0.70),
    # SST-2 quick budget: measured against sst2_full_quick (0.80 -> threshold 0.72), not sst2_full (0.81)
    _run("sst2_said_quick_d300", "sst2", "said", 0.73, "accuracy", d=300),
    _run("sst2_said_quick_d1000", "sst2", "said", 0.76, "accuracy", d=1000),
]


def test_full_reference_keeps_the_longest_suffix_a_full_run_has():
    by = {r["_name"]: r for r in ROWS}
    assert report.full_reference(ROWS, by["sst2_said_quick_d300"])["_name"] == "sst2_full_quick"
    assert report.full_reference(ROWS, by["mrpc_said_d300"])["_name"] == "mrpc_full"
    assert report.full_reference(ROWS, _run("cola_said", "cola", "said", 0.1, d=300)) is None


def test_d90_is_the_smallest_d_reaching_90_percent_of_full():
    assert report.d90([(300, 0.70), (1000, 0.78), (3000, 0.77)], 0.86) == 1000
    assert report.d90([(3000, 0.70), (300, 0.60)], 0.86) is None
    assert report.d90([(100, 0.9)], 1.0) == 100  # exactly 90% counts


def test_intrinsic_table_rows_and_plot(tmp_path):
    groups = report.intrinsic_groups(ROWS)
    assert list(groups) == [("mrpc", "did", ""), ("mrpc", "said", ""), ("sst2", "said", "_quick")]
    assert [d for d, _ in groups[("mrpc", "said", "")]] == [300, 1000, 3000]
    lines = report.intrinsic_table(ROWS).splitlines()
    assert lines[0] == "| task (metric) | method | full FT | frozen (d=0) | d=300 | d=1,000 | d=3,000 | d90 |"
    assert lines[2] == ("| mrpc (accuracy) | did | 0.860 (mrpc_full) | 0.680 (79%) | 0.600 (69%) |  | 0.700 (81%) "
                        "| > 3,000 |")
    assert lines[3] == ("| mrpc (accuracy) | said | 0.860 (mrpc_full) | 0.680 (79%) | 0.700 (81%) | 0.780 (90%) "
                        "| 0.770 (89%) | **1,000** |")
    assert lines[4] == ("| sst2 (accuracy) | said_quick | 0.800 (sst2_full_quick) |  | 0.730 (91%) | 0.760 (95%) |  "
                        "| **300** |")
    assert report.intrinsic_plot(ROWS, str(tmp_path / "id.png"))
    assert os.path.getsize(tmp_path / "id.png") > 10_000
    assert not report.intrinsic_plot(ROWS[:3], str(tmp_path / "none.png"))


def test_report_writes_the_intrinsic_section_from_results_files(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    for r in ROWS:
        with open(res / f"{r['_name']}.json", "w") as f:
            json.dump({k: v for k, v in r.items() if k != "_name"}, f)
    out = tmp_path / "docs" / "results.md"
    out.parent.mkdir()
    assert report.main(["--results", str(res), "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Intrinsic dimension" in text and "| **1,000** |" in text
    assert (tmp_path / "docs" / "intrinsic_dim.png").exists()


def test_mrpc_d90_is_read_on_accuracy_not_on_f1():
    """On F1 every MRPC run above (0.81-0.85, the majority class's 0.812 included) passes 90% of 0.90; accuracy
    separates them."""
    by = {r["_name"]: r for r in ROWS}
    assert report.id_metric(by["mrpc_said_d300"]) == "accuracy" and report.id_score(by["mrpc_said_d300"]) == 0.70
    assert report.id_metric(by["sst2_said_quick_d300"]) == "accuracy"
    f1 = [(d, r["best_metrics"]["f1"]) for d, r in report.intrinsic_groups(ROWS)[("mrpc", "did", "")]]
    assert report.d90(f1, 0.90) == 300  # what an F1 d90 would (wrongly) say
    assert "| > 3,000 |" in report.intrinsic_table(ROWS).splitlines()[2]


def test_frozen_reference_is_found_like_the_full_one():
    by = {r["_name"]: r for r in ROWS}
    assert report.full_reference(ROWS, by["mrpc_said_d300"], "frozen")["_name"] == "mrpc_frozen"
    assert report.full_reference(ROWS, by["sst2_said_quick_d300"], "frozen") is None


def test_a_said_run_without_d_in_its_config_is_an_error():
    bad = _run("mrpc_said", "mrpc", "said", 0.7)
    with pytest.raises(ValueError, match="mrpc_said: a said run without config.delta.d"):
        report.intrinsic_groups([bad])
