"""Smoke tests of the benchmarks in benchmarks/ (they run on demand: `python -m benchmarks.run_all`).

Tiny sizes, a few seconds, no timing assertions: the benchmarks run, print their tables, and the
behaviour they measure holds (strategy (e), the engine, never plays two responses at once and
never sends a response.create while one is in progress). Dead air is measured on simulated time,
so its numbers are deterministic and may be asserted; the core's speed is not.
"""

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import core, dead_air, plot  # noqa: E402
from engine import flow as flowmod  # noqa: E402

SEEDS = (11, 8)  # two small runs of 6 scenarios: seeds 11..16 and 8..13


@pytest.mark.parametrize("seed", SEEDS)
def test_dead_air_runs_and_the_engine_never_overlaps_or_collides(seed):
    report = dead_air.run(scenarios=6, seed=seed)
    text = dead_air.table(report) + dead_air.transition_table(report)
    for name in dead_air.STRATEGIES.values():
        assert name in text
    for key in ("d", "e", "e2", "f"):
        for run in report["runs"][key]:
            assert run.overlaps == 0, (key, run)
            assert run.collisions == 0, (key, run)
            assert not run.stalled, (key, run)
    for run in report["runs"]["e2"] + report["runs"]["f"]:
        assert run.cutoffs == 0 and not run.lost, run
    # The engine keeps to the bound (simulated time: deterministic, not a speed measurement).
    assert report["summary"]["e"]["paired_excess_ms"] <= 50
    assert report["summary"]["f"]["paired_excess_ms"] == 0
    assert plot.dead_air_svg(report).startswith("<svg")


def test_the_same_scenario_gives_the_same_result_every_time():
    bench = dead_air.Bench()
    scenario = dead_air.Scenario.make(3)
    assert bench.run("e", scenario) == bench.run("e", scenario)
    assert bench.run("b", scenario) == bench.run("b", scenario)


def test_core_benchmark_runs_and_both_sides_make_the_same_decisions():
    report = core.run(quick=True, repeats=1, sessions=5, micro_number=20, speed=50)
    text = core.table(report)
    assert "recorded" in text and "20 ms deltas" in text and "Memory per live session" in text
    for variant in report["variants"].values():
        assert variant["core_creates"] == variant["baseline_creates"] > 0
        assert variant["core_final_state"] == variant["baseline_final_state"] == "done"
        assert variant["trace"]["audio_deltas"] > 100
    assert report["memory"]["bytes_per_session"] > 0


def test_turn_taking_runs_and_the_shipped_flow_replies_as_soon_as_the_server_would():
    from benchmarks import turn_taking

    report = turn_taking.run(seeds=2, seed=5, virtual=True)
    text = turn_taking.table(report)
    for v, s in report["variants"].items():
        assert s["name"] in text
        assert s["completed"] == s["sessions"] == 2 and s["collisions"] == 0, (v, s)
        assert s["answers"] == 8 and s["unanswered"] == 0, (v, s)  # the default persona answers four times
    # On virtual time no CPU or network time passes: asking for the reply on the commit costs
    # nothing over the server's own reply; waiting for the transcript costs its delay (0.3-1.5 s).
    assert abs(report["paired"]["a"]["max_ms"]) < 0.01 and abs(report["paired"]["a"]["min_ms"]) < 0.01
    assert report["paired"]["b"]["min_ms"] >= 300
    delays = report["variants"]["b"]["transcription_delay"]
    assert 300 <= delays["min_ms"] <= delays["max_ms"] <= 1500


def test_the_turn_taking_variants_differ_from_the_shipped_flow_only_where_they_say():
    from benchmarks import turn_taking

    shipped = flowmod.load(turn_taking.VARIANTS["a"][1])
    transcript = flowmod.load(turn_taking.VARIANTS["b"][1])
    copy, original = ROOT / "benchmarks" / "flows" / "interviewer.md", ROOT / "flows" / "interviewer.md"
    assert copy.read_text() == original.read_text()
    a, b = shipped.model_dump(), transcript.model_dump()
    for state in ("listening", "nudge"):
        for tr in b["states"][state]["transitions"]:
            assert tr["event"] == "input.transcript"
            tr["event"] = "input.committed"
    for key in ("name", "description"):
        a.pop(key), b.pop(key)
    for state in a["states"]:
        a["states"][state].pop("description"), b["states"][state].pop("description")
    assert a == b
    server = flowmod.load(turn_taking.VARIANTS["c"][1])
    assert server.session.turn_detection == {**shipped.session.turn_detection, "create_response": True}
    assert server.session.instructions == shipped.session.instructions
    assert server.session.tools == shipped.session.tools


def test_startup_benchmark_runs():
    from benchmarks import startup

    report = startup.run(runs=1, modes=("cached", "warm"))
    for mode in ("cached", "warm"):
        marks = report["modes"][mode]["marks"]
        assert 0 < marks["site"]["min_ms"] < marks["engine.runner"]["min_ms"] < marks["first_create"]["min_ms"]
    assert "first response.create" in startup.table(report)
    assert "numpy" not in report["modes"]["cached"]["imports"]["check"]["heavy_ms"]
    # The warm mode's runs take the flow and persona from the cache the first run filled: no YAML read.
    assert "yaml" in report["modes"]["cached"]["imports"]["run"]["heavy_ms"]
    assert "yaml" not in report["modes"]["warm"]["imports"]["run"]["heavy_ms"]


def test_startup_benchmark_runs_another_checkouts_engine_in_turn(tmp_path):
    from benchmarks import startup

    # A checkout that says when its engine is imported: the runs against it must import that one.
    tree = tmp_path / "other"
    shutil.copytree(startup.ROOT / "engine", tree / "engine", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(startup.ROOT / "flows", tree / "flows")
    witness = tmp_path / "imported"
    init = tree / "engine" / "__init__.py"
    init.write_text(init.read_text() + f"\nopen({str(witness)!r}, 'a').write('x')\n")

    report = startup.run(runs=1, modes=("warm",), against=tree)
    assert witness.read_text() == "xx"  # the untimed run and the timed one; never this checkout's runs
    other = report["against"]["modes"]["warm"]["marks"]
    assert 0 < other["site"]["min_ms"] < other["first_create"]["min_ms"]
    assert "ratio of mins" in startup.against_table(report)


def test_sessions_benchmark_runs_and_reports_cpu_and_memory_per_session(tmp_path):
    from benchmarks import sessions

    report = sessions.run([2], speed=20.0, cap_s=60.0, progress=False, out_dir=tmp_path, modes=("burst",))
    (step,) = report["steps"]
    assert step["ok"] == step["sessions"] == 2 and step["collisions"] == 0 and not step["errors"], step
    assert step["cpu_per_session_s"] > 0 and step["rss_per_session_kb"] == step["rss_per_session_kb"]  # not NaN
    assert "RSS / session" in sessions.table(report)
