"""The CI gate: compare two results files metric by metric.

Artifacts are matched by name, metrics by name. A gated metric (latency,
throughput, memory, quality, same-run speed-up) that got worse by more than
the threshold (a fraction of the old value) is a regression; the CLI then
exits with toolchain.errors.EXIT_REGRESSION.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolchain.errors import UserError

from .metrics import artifact_metrics


@dataclass(frozen=True)
class Change:
    artifact: str
    metric: str
    unit: str
    old: float
    new: float
    worse_by: float  # relative change in the bad direction (negative = improved)
    status: str      # "REGRESSED" | "improved" | "ok" | "changed" (ungated)


def compare(old: dict, new: dict, threshold: float = 0.10) -> list[Change]:
    """All metric changes between two validated results documents."""
    if not 0 <= threshold:
        raise UserError(f"--threshold must be a non-negative fraction such as 0.10 (got {threshold})")
    old_by = {a["name"]: a for a in old["artifacts"]}
    new_by = {a["name"]: a for a in new["artifacts"]}
    common = [n for n in new_by if n in old_by]
    if not common:
        raise UserError("the two results files have no artifact name in common: "
                        "compare runs of the same artifacts (names come from the file names)")
    changes: list[Change] = []
    for name in common:
        before = {m.name: m for m in artifact_metrics(old_by[name])}
        for m in artifact_metrics(new_by[name]):
            o = before.get(m.name)
            if o is None or o.value == 0:
                continue
            rel = (m.value - o.value) / abs(o.value)
            worse = rel if m.smaller_is_better else -rel
            if not m.gate:
                status = "changed" if abs(rel) > threshold else "ok"
            elif worse > threshold:
                status = "REGRESSED"
            elif worse < -threshold:
                status = "improved"
            else:
                status = "ok"
            changes.append(Change(name, m.name, m.unit, o.value, m.value, worse, status))
    return changes


def regressions(changes: list[Change]) -> list[Change]:
    return [c for c in changes if c.status == "REGRESSED"]


def format_table(changes: list[Change], threshold: float) -> str:
    """A fixed-width table, one line per metric, regressions marked."""
    rows = [("artifact", "metric", "old", "new", "worse by", "status")]
    for c in changes:
        rows.append((c.artifact, f"{c.metric} [{c.unit}]", f"{c.old:.4g}", f"{c.new:.4g}",
                     f"{c.worse_by:+.1%}", c.status))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    n = len(regressions(changes))
    lines.append(f"{n} regression(s) beyond {threshold:.0%} in gated metrics" if n
                 else f"no gated metric regressed beyond {threshold:.0%}")
    return "\n".join(lines)
