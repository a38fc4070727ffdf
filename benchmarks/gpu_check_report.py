"""The GPU check's output: one JSON document, the comparisons in it, and the summary table.

Pure functions of what the subprocesses returned, so the tests can check each figure by hand.
Plain-text tables (no rich: the GPU image has only torch and transformers).
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import MiB, gib, mib, num, pct

PLAN_TARGET = 0.02                # the plan's peak reserved within 2% of the real one
# Zhou et al. 2024: empty_cache after generation cut memory by about 25% for about 2% more time.
PAPER_EMPTY_CACHE_RESERVED_CHANGE = -0.25
PAPER_EMPTY_CACHE_TIME_CHANGE = 0.02
# What comes back from the device: at most 8 files of 16 MiB, two folders deep, plain names.
MAX_FILES, MAX_FILE_BYTES = 8, 16 << 20
FILE_NAME = re.compile(r"[A-Za-z0-9._-]+")
JSON_NAME, SUMMARY_NAME = "gpu_check.json", "summary.txt"


def rel_error(predicted: float | None, real: float | None) -> float | None:
    """(predicted - real) / real, or None where either is missing or real is 0."""
    if predicted is None or not real:
        return None
    return (predicted - real) / real


def plan_vs_real(name: str, plan: dict[str, Any] | None, real_phases: Sequence[dict[str, Any]] | None,
                 real_peak_bytes: int | None) -> dict[str, Any]:
    """One config's plan against the real first iteration, phase by phase and overall."""
    plan_memory = (plan or {}).get("memory") or {}
    planned = {p["name"]: p["peak_reserved_bytes"] for p in plan_memory.get("phases", [])}
    phases = []
    for phase in real_phases or []:
        predicted = planned.get(phase["name"])
        phases.append({"phase": phase["name"], "real_peak_reserved_bytes": phase["peak_reserved_bytes"],
                       "plan_peak_reserved_bytes": predicted,
                       "rel_error": rel_error(predicted, phase["peak_reserved_bytes"])})
    overall = rel_error(plan_memory.get("peak_reserved_bytes"), real_peak_bytes)
    errors = [p["rel_error"] for p in phases] + [overall]
    return {"name": name, "status": (plan or {}).get("status", "missing"), "phases": phases,
            "real_peak_reserved_bytes": real_peak_bytes,
            "plan_peak_reserved_bytes": plan_memory.get("peak_reserved_bytes"),
            "rel_error": overall,
            "within_target": bool(phases) and all(e is not None and abs(e) <= PLAN_TARGET for e in errors)}


def paper_rows(papers: Sequence[dict[str, Any]], plans: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Step 3's rows: real figures, ratios to the baseline variant, and the plan's prediction."""
    rows = []
    for entry in papers:
        trial, memory = entry["trial"], entry["trial"].get("memory") or {}
        policy = entry["config"]["memory"]
        plan_peak = ((plans.get(f"paper:{entry['name']}") or {}).get("memory") or {}).get("peak_reserved_bytes")
        rows.append({
            "name": entry["name"], "model": entry.get("model"), "weights": entry.get("weights"),
            "weights_saved": entry.get("weights_saved"),
            "status": trial.get("status"), "message": trial.get("message", ""),
            "empty_cache_after_generation": "generation" in policy["empty_cache_after"],
            "expandable_segments": policy["allocator"]["expandable_segments"],
            "peak_reserved_bytes": memory.get("peak_reserved_bytes"),
            "peak_allocated_bytes": memory.get("peak_allocated_bytes"),
            "fragmentation": memory.get("fragmentation"),
            "step_time_s": trial.get("step_time_s"), "step_times_s": trial.get("step_times_s"),
            "iteration_peak_reserved_bytes": [it["run_peak_reserved_bytes"] for it in trial.get("iterations", [])],
            "plan_peak_reserved_bytes": plan_peak,
            "plan_rel_error": rel_error(plan_peak, memory.get("peak_reserved_bytes")),
            "expandable_in_effect": trial.get("expandable_in_effect"),
            "outside_allocator_bytes": (trial.get("context") or {}).get("outside_allocator_bytes"),
        })
    base = next((r for r in rows if r["name"] == "baseline"), None)
    for row in rows:
        row["reserved_vs_baseline"] = _ratio(row["peak_reserved_bytes"], base and base["peak_reserved_bytes"])
        row["step_time_vs_baseline"] = _ratio(row["step_time_s"], base and base["step_time_s"])
        row["plan_vs_baseline"] = _ratio(row["plan_peak_reserved_bytes"], base and base["plan_peak_reserved_bytes"])
    return rows


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base


def paper_claims(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's two figures for empty_cache after generation, against what this run measured."""
    row = next((r for r in rows if r["name"] == "empty_cache"), None) or {}
    change = lambda ratio: None if ratio is None else ratio - 1.0  # noqa: E731
    return [
        {"claim": "peak reserved change, empty_cache after generation", "paper": PAPER_EMPTY_CACHE_RESERVED_CHANGE,
         "measured": change(row.get("reserved_vs_baseline")), "plan": change(row.get("plan_vs_baseline"))},
        {"claim": "step time change, empty_cache after generation", "paper": PAPER_EMPTY_CACHE_TIME_CHANGE,
         "measured": change(row.get("step_time_vs_baseline")), "plan": None},
    ]


def trace_rows(traces: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Step 1's rows, flattened for the JSON and the table."""
    rows = []
    for entry in traces:
        trial, replay = entry["trial"], entry.get("replay") or {}
        snapshot = trial.get("snapshot") or {}
        rows.append({"name": entry["name"], "model": entry["model"], "algorithm": entry["algorithm"],
                     "status": trial.get("status"), "message": trial.get("message", ""),
                     "snapshot_file": snapshot.get("file"), "snapshot_bytes": snapshot.get("bytes"),
                     "synthetic": snapshot.get("synthetic"), "history_full": snapshot.get("history_full"),
                     "iteration_event_index": snapshot.get("iteration_event_index"),
                     "alloc_conf": entry["config"]["memory"]["allocator"], **replay})
    return rows


def assemble(*, schema: str, settings: Any, device: str, steps: Sequence[str], context: dict[str, Any],
             traces: Sequence[dict[str, Any]], papers: Sequence[dict[str, Any]], plans: dict[str, Any],
             wall_time_s: float, nvidia_smi: str | None) -> dict[str, Any]:
    """The whole JSON document."""
    plan_by_name = {p["name"]: p for p in plans.get("plans", [])}
    plan_rows = [plan_vs_real(f"trace:{t['name']}", plan_by_name.get(f"trace:{t['name']}"),
                              _first_phases(t["trial"]), _first_peak(t["trial"])) for t in traces]
    plan_rows += [plan_vs_real(f"paper:{p['name']}", plan_by_name.get(f"paper:{p['name']}"),
                               _first_phases(p["trial"]), _first_peak(p["trial"])) for p in papers]
    rows = paper_rows(papers, plan_by_name)
    after_trials = [{**(e["trial"].get("context") or {}), "name": f"after {kind}:{e['name']}"}
                    for kind, entries in (("trace", traces), ("paper", papers)) for e in entries]
    return {
        "schema": schema, "device": device, "dry_run": settings.name == "dry", "settings": dataclasses.asdict(settings),
        "steps": list(steps), "wall_time_s": wall_time_s,
        "machine": {"nvidia_smi": nvidia_smi, **{k: context.get(k) for k in
                                                 ("torch", "cuda", "transformers", "python", "gpu", "cuda_available")}},
        "traces": trace_rows(traces),
        "plan": {"status": plans.get("status"), "message": plans.get("message", ""), "target": PLAN_TARGET,
                 "rows": plan_rows},
        "paper": {"rows": rows, "claims": paper_claims(rows)},
        "context": {"status": context.get("status"), "message": context.get("message", ""),
                    "stages": context.get("stages", []), "after_trials": after_trials},
        "files": [], "problems": [],
    }


def _first_phases(trial: dict[str, Any]) -> list[dict[str, Any]] | None:
    iterations = trial.get("iterations") or []
    return iterations[0]["phases"] if iterations else None


def _first_peak(trial: dict[str, Any]) -> int | None:
    iterations = trial.get("iterations") or []
    return iterations[0]["run_peak_reserved_bytes"] if iterations else None


def output_problems(out_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The files in `out_dir` and every way they break what the device hands back."""
    files, problems = [], []
    for path in sorted(out_dir.rglob("*")):
        rel = path.relative_to(out_dir)
        if path.is_dir():
            continue
        # the JSON lists itself before it is written: its own size is not known yet (it is small)
        files.append({"name": str(rel), "bytes": None if rel == Path(JSON_NAME) else path.stat().st_size})
        if not all(FILE_NAME.fullmatch(part) for part in rel.parts):
            problems.append(f"{rel}: a name with characters other than letters, digits, '.', '_' and '-'")
        if len(rel.parts) > 2:
            problems.append(f"{rel}: more than two folders deep")
        if path.stat().st_size > MAX_FILE_BYTES:
            problems.append(f"{rel}: {path.stat().st_size / MiB:.1f} MiB, over the 16 MiB that comes back")
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files in {out_dir}, more than the {MAX_FILES} that come back")
    return files, problems


def write(document: dict[str, Any], out_dir: Path) -> str:
    """Write gpu_check.json and summary.txt, listing the folder's files (and any problem) in the JSON.

    The JSON goes first, and a failing table is written as its error: a bug in the summary must
    not lose a GPU run's figures. Returns the summary text.
    """
    json_path = out_dir / JSON_NAME
    json_path.write_text(json.dumps(document, indent=1, default=str) + "\n")
    try:
        text = summary(document)
    except Exception as exc:  # noqa: BLE001 - see above; the JSON holds every figure anyway
        text = f"the summary table failed ({type(exc).__name__}: {exc}); every figure is in {JSON_NAME}"
    (out_dir / SUMMARY_NAME).write_text(text + "\n")
    document["files"], document["problems"] = output_problems(out_dir)
    json_path.write_text(json.dumps(document, indent=1, default=str) + "\n")
    return text + "".join(f"\nproblems: {p}" for p in document["problems"])


# -- the table -------------------------------------------------------------------------------
def summary(doc: dict[str, Any]) -> str:
    """The summary table, one block per step."""
    m = doc["machine"]
    lines = [f"GPU check ({doc['device']}{', dry run' if doc['dry_run'] else ''}): {m.get('gpu') or 'no GPU'}, "
             f"torch {m.get('torch')}, CUDA {m.get('cuda')}, transformers {m.get('transformers')}; "
             f"{doc['wall_time_s']:.0f} s"]
    lines += _block("1. traces: simulated vs real reserved after every alloc, free and segment release",
                    ["trace", "status", "events", "equal", "max diff MiB", "real peak GiB", "sim peak GiB",
                     "memory_stats peak GiB", "mid-run equal", "mid-run max diff MiB"],
                    [_trace_cells(r) for r in doc["traces"]])
    lines += _block(f"2. plan vs real first iteration, peak reserved error per phase (target {PLAN_TARGET:.0%})",
                    ["config", "generation", "experience", "actor_train", "critic_train", "peak", "within"],
                    [_plan_cells(r) for r in doc["plan"]["rows"]])
    lines += _block("3. PPO, empty_cache after generation x expandable_segments",
                    ["variant", "status", "peak res GiB", "peak alloc GiB", "frag", "step s", "res/base",
                     "time/base", "plan GiB", "plan err", "outside MiB"],
                    [_paper_cells(r) for r in doc["paper"]["rows"]])
    for claim in doc["paper"]["claims"]:
        lines.append(f"   {claim['claim']}: paper {pct(claim['paper'], signed=True)}, "
                     f"measured {pct(claim['measured'], signed=True)}, plan {pct(claim['plan'], signed=True)}")
    lines += _block("4. memory outside PyTorch's allocator (cudaMemGetInfo used - torch reserved)",
                    ["stage", "device used MiB", "torch reserved MiB", "outside MiB"],
                    [[s.get("name", s.get("stage")), mib(s.get("device_used_bytes"), 1),
                      mib(s.get("torch_reserved_bytes"), 1), mib(s.get("outside_allocator_bytes"), 1)]
                     for s in [*doc["context"]["stages"], *doc["context"]["after_trials"]]])
    return "\n".join(lines)


def _trace_cells(r: dict[str, Any]) -> list[str]:
    whole, mid = r.get("whole") or {}, (r.get("midrun") or {}).get("seeded") or {}
    exact = lambda c: "-" if not c else f"{c['matching_events']}/{c['compared_events']}"  # noqa: E731
    return [r["name"], str(r["status"]), str(r.get("events", "-")), exact(whole),
            mib(whole.get("max_abs_diff_bytes"), 1),
            gib(whole.get("real_peak_reserved_bytes"), 3), gib(whole.get("sim_peak_reserved_bytes"), 3),
            gib(r.get("probe_peak_reserved_bytes"), 3), exact(mid), mib(mid.get("max_abs_diff_bytes"), 1)]


def _plan_cells(r: dict[str, Any]) -> list[str]:
    errors = {p["phase"]: p["rel_error"] for p in r["phases"]}
    phases = ("generation", "experience", "actor_train", "critic_train")
    return [r["name"], *(pct(errors.get(p), signed=True) for p in phases), pct(r["rel_error"], signed=True),
            "yes" if r["within_target"] else "no"]


def _paper_cells(r: dict[str, Any]) -> list[str]:
    frag = "-" if r["fragmentation"] is None else f"{r['fragmentation']:.1%}"
    step = "-" if r["step_time_s"] is None else f"{r['step_time_s']:.2f}"
    return [r["name"], str(r["status"]), gib(r["peak_reserved_bytes"], 3), gib(r["peak_allocated_bytes"], 3), frag,
            step, num(r["reserved_vs_baseline"]), num(r["step_time_vs_baseline"]),
            gib(r["plan_peak_reserved_bytes"], 3), pct(r["plan_rel_error"], signed=True),
            mib(r["outside_allocator_bytes"], 1)]


def _block(title: str, headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)] if rows else [len(h) for h in headers]
    fmt = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    return ["", title, fmt(headers), *(fmt(r) for r in rows)] if rows else ["", title, "   (not run)"]
