"""Export results for dashboards: github-action-benchmark JSON and CSV.

github-action-benchmark's `customSmallerIsBetter` / `customBiggerIsBetter`
tools each read a JSON list of {"name", "unit", "value", "range", "extra"};
one results file therefore yields one list per direction.
"""

from __future__ import annotations

import csv
import io
import json

from .metrics import artifact_metrics

FORMATS = ("github-action-benchmark", "csv")
DIRECTIONS = ("smaller", "bigger")


def github_action_benchmark(doc: dict, direction: str = "smaller") -> list[dict]:
    """Entries for the customSmallerIsBetter (or customBiggerIsBetter) tool."""
    env = doc["environment"]
    extra = f"{doc['settings']['device']}, {doc['settings']['threads']} threads, " \
            f"{env.get('cpu', {}).get('model', '?')}, commit {env.get('liar_export', {}).get('commit', '?')}"
    out = []
    for a in doc["artifacts"]:
        for m in artifact_metrics(a):
            if m.smaller_is_better != (direction == "smaller"):
                continue
            entry = {"name": f"{a['name']} — {m.name}", "unit": m.unit, "value": round(m.value, 6),
                     "extra": extra}
            if m.spread:
                entry["range"] = f"p10 {m.spread[0]:.4g} … p90 {m.spread[1]:.4g}"
            out.append(entry)
    return out


def to_csv(doc: dict) -> str:
    """One row per artifact and metric, with the run's timestamp for history."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["created", "artifact", "role", "backend", "weight_type", "metric", "value", "unit",
                "p10", "p90", "smaller_is_better", "gate"])
    for a in doc["artifacts"]:
        for m in artifact_metrics(a):
            p10, p90 = m.spread if m.spread else ("", "")
            w.writerow([doc["created"], a["name"], a["role"], a["backend"], a.get("weight_type", ""),
                        m.name, f"{m.value:.6g}", m.unit, p10 if p10 == "" else f"{p10:.6g}",
                        p90 if p90 == "" else f"{p90:.6g}", int(m.smaller_is_better), int(m.gate)])
    return buf.getvalue()


def export(doc: dict, fmt: str, direction: str = "smaller") -> str:
    if fmt == "csv":
        return to_csv(doc)
    return json.dumps(github_action_benchmark(doc, direction), indent=1, ensure_ascii=False) + "\n"
