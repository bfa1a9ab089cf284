"""Speed of `engine check --explore`: states explored per second, and what a state costs.

    python -m benchmarks.explore [--quick] [--repeats N] [--json FILE] [--profile]

1. Exploration: flows/assessment.yaml with the default bounds (answers 1, faults 0, depth 400),
   then bigger bounds (answers 2; one fault per path of every kind), the other shipped flows with
   the defaults. Each runs R times; the table gives the fastest wall time and the fastest CPU time
   of this process (`time.process_time`: other work on the machine counts less), and the states,
   distinct states and transitions, which are the same on every run (the search is deterministic).
2. Cost per state: states reached by the exploration of flows/assessment.yaml (a sample of its
   tree, replayed from a fresh core) are snapshotted, restored and keyed many times each:
   `Interview.snapshot()`, `Interview.restore(flow, snap)` and the explorer's key, in
   microseconds; a cProfile of one exploration splits its time between them and the core's own work.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path
from typing import Any

from engine import flow as flowmod
from engine.explore import Bounds, explore
from engine.explore.key import Keyer
from engine.explore.search import reach
from engine.explore.world import FAULTS, Shape
from engine.interview import Interview

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ASSESSMENT = ROOT / "flows" / "assessment.yaml"
TARGET_S = 60.0  # the default bounds on flows/assessment.yaml, on one core of the benchmark machine

# (name, flow, bounds); the first is the target.
FULL = [
    ("assessment, defaults", ASSESSMENT, Bounds()),
    ("assessment, answers 2", ASSESSMENT, Bounds(answers=2, budget=3600)),
    ("assessment, 1 fault (every kind)", ASSESSMENT, Bounds(faults=1, budget=3600)),
    ("seed, defaults", ROOT / "flows" / "seed.yaml", Bounds()),
    ("playback_aware, defaults", HERE / "flows" / "playback_aware.yaml", Bounds()),
]
QUICK = [
    ("assessment, answers 0", ASSESSMENT, Bounds(answers=0)),
    ("assessment, answers 0, 1 loss", ASSESSMENT,
     Bounds(answers=0, faults=1, kinds=frozenset({"lost-created", "lost-done", "stray"}))),
]


def run_one(path: Path, bounds: Bounds, repeats: int) -> dict[str, Any]:
    flow = flowmod.load(path)
    walls, cpus = [], []
    result = None
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        result = explore(flow, bounds)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    assert result is not None
    return {"flow": str(path.relative_to(ROOT)), "answers": bounds.answers, "faults": bounds.faults,
            "kinds": sorted(bounds.kinds) if bounds.faults else [], "depth": bounds.depth,
            "explored": result.explored, "distinct": result.distinct, "transitions": result.transitions,
            "covered": result.covered, "flow_transitions": result.flow_transitions, "complete": result.complete,
            "cut": result.cut, "violations": [str(v.finding) for v in result.violations],
            "wall_s": walls, "cpu_s": cpus, "wall_min_s": min(walls), "cpu_min_s": min(cpus),
            "states_per_s": result.explored / min(walls) if min(walls) else 0.0}


def state_costs(samples: int = 200, number: int = 200) -> dict[str, float]:
    """Microseconds per snapshot, restore and key, over states the exploration reaches."""
    flow = flowmod.load(ASSESSMENT)
    bounds = Bounds(answers=1, depth=400, budget=600)
    result = explore(flow, bounds)
    shape = Shape.of(flow, result.answers, bounds.faults, bounds.kinds)
    keyer = Keyer(flow, shape)
    step = max(1, len(result.tree) // samples)
    snaps, worlds = [], []
    for node in range(1, len(result.tree), step):
        iv, world = reach(flow, bounds, result.answers, result.path(node))
        if not iv.done:
            snaps.append(iv.snapshot())
            worlds.append(world)
    out: dict[str, float] = {"states": float(len(snaps))}

    def per_call(fn: Any) -> float:
        t0 = time.process_time()
        for _ in range(number):
            for i in range(len(snaps)):
                fn(i)
        return (time.process_time() - t0) / (number * len(snaps)) * 1e6

    ivs = [Interview.restore(flow, s) for s in snaps]
    out["snapshot_us"] = per_call(lambda i: ivs[i].snapshot())
    out["restore_us"] = per_call(lambda i: Interview.restore(flow, snaps[i]))
    out["key_us"] = per_call(lambda i: keyer.key(snaps[i], worlds[i]))
    out["turns_mean"] = sum(len(iv.turns) for iv in ivs) / len(ivs)
    return out


def profile(top: int = 14) -> str:
    """Where one exploration's time goes (cumulative, by function)."""
    flow = flowmod.load(ASSESSMENT)
    prof = cProfile.Profile()
    prof.runcall(explore, flow, Bounds(answers=1, budget=600))
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(r"interview.py:\d+\((restore|snapshot|receive|advance)\)|"
                                               r"explore/key.py:\d+\(key\)|explore/world.py:\d+\((moves|apply)\)|"
                                               r"explore/search.py:\d+\(explore\)")
    lines = [x for x in out.getvalue().splitlines() if "(" in x and ("/" in x or "function calls" in x)]
    return "\n".join(line.replace(str(ROOT) + "/", "") for line in lines[:top])


def run(quick: bool = False, repeats: int = 3) -> dict[str, Any]:
    configs = QUICK if quick else FULL
    rows = []
    for name, path, bounds in configs:
        print(f"  {name} ...", file=sys.stderr, flush=True)
        rows.append({"name": name, **run_one(path, bounds, 1 if "fault" in name or "answers 2" in name else repeats)})
    report: dict[str, Any] = {"rows": rows, "repeats": repeats, "faults": sorted(FAULTS)}
    if not quick:
        report["costs"] = state_costs()
        target = rows[0]
        report["target"] = {"wall_min_s": target["wall_min_s"], "ok": target["complete"]
                            and target["wall_min_s"] < TARGET_S}
    return report


def table(report: dict[str, Any]) -> str:
    head = ("| exploration | bounds | states explored | distinct | transitions | flow transitions covered | "
            "complete | wall (min) | CPU (min) | states/s | violations |")
    lines = [head, "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    for r in report["rows"]:
        bounds = f"answers {r['answers']}, faults {r['faults']}, depth {r['depth']}"
        runs = f" ({len(r['wall_s'])} runs)" if len(r["wall_s"]) > 1 else ""
        lines.append(f"| {r['name']} (`{r['flow']}`) | {bounds} | {r['explored']:,} | {r['distinct']:,} | "
                     f"{r['transitions']:,} | {r['covered']}/{r['flow_transitions']} | "
                     f"{'yes' if r['complete'] else 'no: ' + r['cut']} | {r['wall_min_s']:.1f} s{runs} | "
                     f"{r['cpu_min_s']:.1f} s | {r['states_per_s']:,.0f} | {len(r['violations']) or 'none'} |")
    costs = report.get("costs")
    if costs:
        lines += ["", f"Cost per state, over {costs['states']:.0f} states reached on flows/assessment.yaml "
                      f"(mean {costs['turns_mean']:.1f} turns each), CPU time per call:", "",
                  "| `Interview.snapshot()` | `Interview.restore(flow, snap)` | explorer key |", "|---:|---:|---:|",
                  f"| {costs['snapshot_us']:.1f} us | {costs['restore_us']:.1f} us | {costs['key_us']:.1f} us |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two small explorations, a few seconds")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each default-bounds exploration")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", action="store_true", help="print where one exploration's time goes")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    report = run(args.quick, args.repeats)
    if args.profile:
        report["profile"] = profile()
    print(f"explore: {time.perf_counter() - t0:.0f} s\n")
    print(table(report))
    if "target" in report:
        t = report["target"]
        print(f"\ntarget: flows/assessment.yaml with the default bounds under {TARGET_S:g} s: "
              f"{'met' if t['ok'] else 'MISSED'} ({t['wall_min_s']:.1f} s)")
    if args.profile:
        print("\n" + report["profile"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
