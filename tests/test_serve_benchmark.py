"""Smoke test of benchmarks/serve.py (run on demand: `python -m benchmarks.serve --write`): tiny
steps, no timing assertions; the pages' interviews run and every step is measured."""

import sys

from helpers import ROOT

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import serve  # noqa: E402


def test_the_serve_benchmark_measures_each_step(tmp_path):
    report = serve.run([1, 3], window=2.0, progress=False, ramp=0.3, settle=0.3)
    assert [r["n"] for r in report["rows"]] == [1, 3]
    for row in report["rows"]:
        assert row["running"] == row["n"] and row["cpu_core_pct"] > 0 and row["rss_mb"] > 0
        assert row["mic_frames_per_s"] > 0 and row["other_outcomes"] == []
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\nother sections\n")
    serve.write(report, results)
    serve.write(report, results)  # a second run replaces its section
    text = results.read_text()
    assert text.count(serve.BEGIN) == 1 and "other sections" in text and "| 3 | 3 |" in text


def test_a_regenerated_results_file_keeps_the_serve_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text(f"# old\n\n{serve.BEGIN}\n## engine serve\nfigures\n{serve.END}\n")
    kept = serve.keep_section(path, "# Benchmark results\n\nnew sections\n")
    assert kept.startswith("# Benchmark results") and "new sections" in kept and "figures" in kept
