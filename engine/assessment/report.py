"""The assessment section of report.md, written for a teacher: the bands, the measures behind
each (and the band each measure alone suggests), the evidence, which measures are proxies,
and what failed or fell back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .bands import METRIC_INFO, THRESHOLDS, band_of, metric_score
from .models import Assessment, Part

__all__ = ["render_markdown"]

TITLES = {
    "fluency": "Fluency (proxies for phonology)",
    "vocabulary": "Vocabulary",
    "grammar": "Grammar",
}


def _value(name: str, value: float | None) -> str:
    if value is None:
        return "not measured"
    fmt = METRIC_INFO[name].fmt if name in METRIC_INFO else "g"
    return format(value, fmt)


def _source(p: Part) -> str:
    if p.source == "model":
        return "model judgement"
    return "offline measures" + (" (model failed)" if p.fallback else "")


def _part_section(name: str, p: Part) -> list[str]:
    out = [f"### {TITLES.get(name, name.title())}: {p.band} ({p.score:.1f})", ""]
    if p.source == "model":
        out += ["The band is the model's judgement; the measures below are the offline ones, for reference.", ""]
    if p.fallback:
        out += [f"The model-based judgement was not used: {p.fallback}.", ""]
    rules = THRESHOLDS.get(name, {})
    out += ["| Measure | Value | This measure alone suggests |", "|---|---|---|"]
    for key, value in p.metrics.items():
        info = METRIC_INFO.get(key)
        label = info.label if info else key
        if key in p.proxies:
            label += " \\*"
        suggests: str
        if key in rules and value is not None:
            suggests = band_of(metric_score(rules[key], value))
        else:
            suggests = "not scored" if key not in rules else "-"
        out.append(f"| {label} | {_value(key, value)} | {suggests} |")
    out.append("")
    if p.evidence:
        out += ["Evidence:", *[f"- {e}" for e in p.evidence], ""]
    proxies = [k for k in p.proxies if k in METRIC_INFO and METRIC_INFO[k].proxy]
    if proxies:
        out += ["\\* Proxies (indirect measures):"]
        out += [f"- {METRIC_INFO[k].label}: {METRIC_INFO[k].proxy}" for k in proxies]
        out.append("")
    return out


def render_markdown(result: Mapping[str, Any]) -> str:
    """Markdown for the result of `job` (the JSON dict, or anything Assessment validates)."""
    a = Assessment.model_validate(result)
    out = [
        "## Assessment",
        "",
        f"**Overall: {a.overall.band}**, score {a.overall.score:.1f} on a 1-6 scale "
        "(A1 = 1, A2 = 2, B1 = 3, B2 = 4, C1 = 5, C2 = 6).",
        "",
        f"> {a.summary}",
        "",
        "| Part | Band | Score | Assessed by |",
        "|---|---|---|---|",
    ]
    for name, p in a.parts.items():
        out.append(f"| {TITLES.get(name, name)} | {p.band} | {p.score:.1f} | {_source(p)} |")
    for name in a.failed_parts:
        out.append(f"| {TITLES.get(name, name)} | failed | - | - |")
    out.append("")
    if a.failed_parts:
        out += ["**Partial report.** These parts failed and are not in the overall band:", ""]
        out += [f"- {name}: {a.errors.get(name, 'unknown error')}" for name in a.failed_parts]
        out.append("")
    if a.notes:
        out += [f"Note: {n}" for n in a.notes] + [""]
    for name, p in a.parts.items():
        out += _part_section(name, p)
    out += [
        "### How to read this",
        "",
        f"- An automatic estimate from {a.words} transcribed words, not a certified CEFR result.",
        "- Each part's score is a weighted mean of its measures' scores; each measure is placed",
        "  between typical values per band in one heuristic table (`engine/assessment/bands.py`,",
        "  `THRESHOLDS`). The overall score is the mean of the parts.",
        "- Pronunciation (sounds, stress, intonation) is not measured from the audio; the fluency",
        "  part uses the transcript and voice-activity timing as proxies.",
        "- Error patterns are a short list of common learner errors: finding none does not mean",
        "  the speech was error-free.",
        "",
    ]
    return "\n".join(out)
