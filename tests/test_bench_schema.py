"""Results schema: round trip, version check, clear errors; compare gate; dashboards; report."""

from __future__ import annotations

import csv
import io
import json

import pytest

from benchmarks.cli import main
from benchmarks.schema import SCHEMA_VERSION, load_results, save_results
from toolchain.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_REGRESSION, UserError

from .test_bench_helpers import results

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write(tmp_path, name, doc):
    path = tmp_path / name
    save_results(doc, path)
    return str(path)


def test_round_trip(tmp_path):
    doc = results()
    path = write(tmp_path, "r.json", doc)
    assert load_results(path) == doc
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left behind


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "schema_version"),
    (lambda d: d.pop("kind"), "not a liar-bench results file"),
    (lambda d: d["artifacts"].append(dict(d["artifacts"][0])), "duplicate artifact names"),
    (lambda d: d["artifacts"][0].pop("decode"), "lacks 'decode'"),
])
def test_rejects_other_versions_and_broken_files(tmp_path, mutate, message):
    doc = results()
    mutate(doc)
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match=message):
        load_results(tmp_path / "bad.json")


def test_unreadable_results_are_user_errors(tmp_path, capsys):
    (tmp_path / "junk.json").write_text("{not json")
    assert main(["compare", str(tmp_path / "junk.json"), str(tmp_path / "junk.json")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith("liar-bench: error:") and "not valid JSON" in err and "\n" not in err
    assert main(["compare", str(tmp_path / "missing.json"), str(tmp_path / "junk.json")]) == EXIT_BAD_INPUT


def test_compare_within_threshold_exits_0(tmp_path, capsys):
    old = write(tmp_path, "old.json", results())
    new = write(tmp_path, "new.json", results(latency_scale=1.05, rss_scale=1.02))
    assert main(["compare", old, new, "--threshold", "0.10"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "REGRESSED" not in out and "decode latency median" in out


@pytest.mark.parametrize("kw, metric", [
    ({"latency_scale": 1.3}, "decode latency median"),
    ({"rss_scale": 1.5}, "peak RSS"),
    ({"ppl_scale": 1.2}, "perplexity"),
])
def test_compare_beyond_threshold_exits_4(tmp_path, capsys, kw, metric):
    old = write(tmp_path, "old.json", results())
    new = write(tmp_path, "new.json", results(**kw))
    assert main(["compare", old, new, "--threshold", "0.10"]) == EXIT_REGRESSION
    captured = capsys.readouterr()
    assert any(metric in line and "REGRESSED" in line for line in captured.out.splitlines())
    assert "regressed beyond 10%" in captured.err
    # a looser gate lets the same change through
    assert main(["compare", old, new, "--threshold", "0.9"]) == EXIT_OK


def test_compare_improvement_is_not_a_regression(tmp_path):
    old = write(tmp_path, "old.json", results(latency_scale=1.5))
    new = write(tmp_path, "new.json", results())
    assert main(["compare", old, new]) == EXIT_OK


def test_compare_needs_common_artifacts(tmp_path):
    other = results()
    for a in other["artifacts"]:
        a["name"] = "other-" + a["name"]
    other["artifacts"][1]["baseline"] = "other-dense-f16"
    assert main(["compare", write(tmp_path, "a.json", results()), write(tmp_path, "b.json", other)]) \
        == EXIT_BAD_INPUT


def test_dashboard_github_action_benchmark(tmp_path):
    path = write(tmp_path, "r.json", results())
    for direction in ("smaller", "bigger"):
        out = tmp_path / f"{direction}.json"
        assert main(["export-dashboard", path, "--format", "github-action-benchmark",
                     "--direction", direction, "-o", str(out)]) == EXIT_OK
        entries = json.loads(out.read_text())
        assert entries and all({"name", "unit", "value"} <= set(e) for e in entries)
        assert all(isinstance(e["value"], (int, float)) for e in entries)
        names = [e["name"] for e in entries]
        assert len(set(names)) == len(names)
        if direction == "smaller":
            assert "s50-f16 — decode latency median" in names
            assert "s50-f16 — decode speed-up vs baseline" not in names
        else:
            assert "s50-f16 — decode speed-up vs baseline" in names
            assert all("latency" not in n for n in names)


def test_dashboard_csv(tmp_path, capsys):
    path = write(tmp_path, "r.json", results())
    assert main(["export-dashboard", path, "--format", "csv"]) == EXIT_OK
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    lat = [r for r in rows if r["artifact"] == "s50-f16" and r["metric"] == "decode latency median"]
    assert len(lat) == 1 and float(lat[0]["value"]) == pytest.approx(11.0)
    assert {r["artifact"] for r in rows} == {"dense-f16", "s50-f16"}


def test_report_writes_pngs_and_html(tmp_path):
    import matplotlib.image

    runs = [write(tmp_path, f"r{i}.json", results(latency_scale=s, created=f"2025-01-0{i + 1}T00:00:00+00:00"))
            for i, s in enumerate((1.2, 1.0))]
    out = tmp_path / "report"
    assert main(["report", *runs, "-o", str(out)]) == EXIT_OK
    for name in ("latency.png", "memory.png", "quality.png", "history.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        assert matplotlib.image.imread(out / name).shape[0] > 100
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    assert "s50-f16" in page and "<table>" in page and "Test CPU" in page
    assert "src=\"http" not in page  # self-contained


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["compare", "only-one.json"]) == EXIT_BAD_INPUT
    assert main(["export-dashboard", "r.json", "--format", "xml"]) == EXIT_BAD_INPUT
    assert main(["run", str(tmp_path / "nope.gguf"), "--baseline", str(tmp_path / "nope2.gguf"),
                 "-o", str(tmp_path / "r.json")]) == EXIT_BAD_INPUT
    assert not (tmp_path / "r.json").exists()
    assert "does not exist" in capsys.readouterr().err
