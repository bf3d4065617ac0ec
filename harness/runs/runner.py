"""Runs: a resolved config, per-case records appended as they come, and a summary with provenance.

A run directory holds
* ``config.json`` - the fully resolved configuration;
* ``cases.jsonl`` - one line per (case, strength), appended and fsync'ed chunk by chunk;
* ``summary.json`` - aggregates + versions (package, git commit, model weights hash, data sha256).
Re-running the same command on an interrupted directory resumes: finished (case, strength) pairs
are skipped, a torn last line is dropped, nothing else is touched.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from editbench import __version__
from editbench.plugins import registry
from editbench.errors import ConfigError, EditbenchError
from editbench.modeling.loading import DEFAULT_MODEL

# Keys whose change alters results: a run directory refuses to resume under different values.
RESULT_KEYS = ("model", "benchmark", "split", "method", "method_params", "strengths", "seed", "dtype",
               "generation", "max_new_tokens")


@dataclass
class RunConfig:
    model: str = DEFAULT_MODEL
    benchmark: str = "counterfact"
    split: str | None = None
    method: str = "unedited"
    method_params: dict[str, Any] = field(default_factory=dict)
    strengths: list[float] = field(default_factory=lambda: [1.0])
    limit: int | None = None
    seed: int = 0
    batch_size: int = 32
    chunk_size: int = 32
    device: str = "cpu"
    dtype: str = "float32"
    generation: bool = False
    max_new_tokens: int = 64
    data_root: str | None = None
    out: str | None = None

    def validate(self) -> None:
        if not self.strengths:
            raise ConfigError("at least one strength is required")
        for s in self.strengths:
            if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s):
                raise ConfigError(f"invalid strength {s!r}: strengths must be finite numbers")
        if len(set(self.strengths)) != len(self.strengths):
            raise ConfigError(f"duplicate strengths in {self.strengths}")
        for name in ("batch_size", "chunk_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1, got {self.limit}")

    def default_out(self) -> Path:
        tag = self.method
        if self.method_params:
            tag += "-" + hashlib.sha1(json.dumps(self.method_params, sort_keys=True).encode()).hexdigest()[:8]
        return Path("runs") / self.model.replace("/", "__") / f"{self.benchmark}-{self.split}" / tag


def parse_strengths(text: str) -> list[float]:
    out = []
    for part in text.split(","):
        try:
            v = float(part)
        except ValueError:
            raise ConfigError(f"invalid strength {part.strip()!r} in --strengths {text!r}") from None
        if not math.isfinite(v):
            raise ConfigError(f"invalid strength {part.strip()!r}: must be finite")
        out.append(v)
    return out


#: what computes results: local changes here make a run "dirty"; edits to results/, docs or scripts
#: (e.g. resuming a committed run directory) do not.
CODE_PATHS = ("harness", "methods", "benchmarks", "pyproject.toml")


def git_state() -> dict:
    """Commit of the harness source (when run from a checkout) and whether its code has local changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                     *CODE_PATHS], capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {"commit": commit or "unknown", "dirty": dirty}


def versions() -> dict:
    import numpy
    import torch
    import transformers

    return {"editbench": __version__, **{f"git_{k}": v for k, v in git_state().items()},
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": numpy.__version__}


def code_version(v: dict) -> dict:
    """The part of :func:`versions` that identifies the code (stored with every record)."""
    return {k: x for k, x in v.items() if k == "editbench" or k.startswith("git_")}


def record_code_counts(records: list[dict], fallback: dict | None) -> list[dict]:
    """Which code produced the records: one entry per distinct code version with its record count.
    Records written before editbench stored ``code`` per record take ``fallback`` (the previous
    summary's versions), so a resume never relabels old records with the new commit."""
    counts: dict[str, int] = {}
    for r in records:
        c = r.get("code") or code_version(fallback or {"git_commit": "unknown"})
        key = json.dumps(c, sort_keys=True)
        counts[key] = counts.get(key, 0) + 1
    return [{**json.loads(k), "n_records": n} for k, n in counts.items()]


# ---------------------------------------------------------------------------------------------
class RunDir:
    def __init__(self, path: Path):
        self.path = path
        self.config_path = path / "config.json"
        self.cases_path = path / "cases.jsonl"
        self.summary_path = path / "summary.json"

    def check_or_write_config(self, resolved: dict, keys: tuple[str, ...] = RESULT_KEYS) -> None:
        if self.config_path.exists():
            try:
                old = json.loads(self.config_path.read_text())
            except json.JSONDecodeError:
                raise EditbenchError(f"{self.config_path} is corrupt; use another --out") from None
            diff = [k for k in keys if old.get(k) != resolved.get(k)]
            if diff:
                raise ConfigError(f"{self.path} holds a run with a different {', '.join(diff)}; use another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.config_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(resolved, indent=2, sort_keys=True))
        os.replace(tmp, self.config_path)

    def read_records(self, path: Path | None = None, truncate: bool = True) -> list[dict]:
        """Records already written (default: cases.jsonl). A torn (partially written) last line is
        skipped, and cut off the file when ``truncate`` (only the writer may do that: a reader must
        not cut a line another process is still appending)."""
        path = path or self.cases_path
        gz = path.with_name(path.name + ".gz")  # committed reference results keep large records gzipped
        if path.exists():
            raw = path.read_bytes()
        elif gz.exists():
            raw = gzip.decompress(gz.read_bytes())
            if truncate:  # the writer resumes: appends go to the plain file again
                path.write_bytes(raw)
                gz.unlink()
        else:
            return []
        records, good_end, pos = [], 0, 0
        for line in raw.splitlines(keepends=True):
            pos += len(line)
            if not line.endswith(b"\n"):
                break
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise EditbenchError(f"{path}: unreadable line {len(records) + 1}; fix or move the file") from None
            good_end = pos
        if truncate and good_end < len(raw):
            with open(path, "r+b") as f:
                f.truncate(good_end)
        return records

    def append(self, records: list[dict], path: Path | None = None) -> None:
        if not records:
            return
        with open(path or self.cases_path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())

    def read_summary(self) -> dict | None:
        """The summary written by an earlier invocation, or None (missing or unreadable)."""
        try:
            return json.loads(self.summary_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def write_summary(self, summary: dict) -> None:
        tmp = self.summary_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True))
        os.replace(tmp, self.summary_path)


def execute(cfg: RunConfig, progress: bool = True, on_chunk: Callable[[int], None] | None = None) -> dict:
    """Run (or resume) an evaluation; returns the summary dict (also written to disk)."""
    from tqdm.auto import tqdm

    from editbench.modeling.loading import load_model

    cfg.validate()
    code_versions = versions()  # the code that runs is the code at start, whatever changes meanwhile
    bench_cls = registry.load("benchmark", cfg.benchmark)
    method_cls = registry.load("method", cfg.method)
    bench = bench_cls(data_root=cfg.data_root, split=cfg.split)
    bench.check_runnable()
    cfg.split = bench.split
    cases = bench.load(cfg.limit)  # validates data before anything is written
    out = RunDir(Path(cfg.out) if cfg.out else cfg.default_out())
    cfg.out = str(out.path)
    lm = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, seed=cfg.seed)
    method = method_cls(lm, cfg.method_params, seed=cfg.seed)
    resolved = dataclasses.asdict(cfg)
    resolved["method_params"] = dataclasses.asdict(method.params)
    resolved["data_root"] = str(bench.data_root)
    out.check_or_write_config(resolved)

    existing = out.read_records()
    previous_versions = (out.read_summary() or {}).get("versions")
    code = code_version(code_versions)
    done = {(r["case_id"], r["strength"]) for r in existing}
    todo = {c.case_id: [s for s in cfg.strengths if (c.case_id, s) not in done] for c in cases}
    pending = [c for c in cases if todo[c.case_id]]
    evaluator = bench.make_evaluator(lm, method, strengths=cfg.strengths, batch_size=cfg.batch_size,
                                     generation=cfg.generation, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    t0 = time.time()
    bar = tqdm(total=len(cases), initial=len(cases) - len(pending), unit="case", disable=not progress,
               desc=f"{cfg.method} on {cfg.benchmark}", file=sys.stderr)
    for start in range(0, len(pending), cfg.chunk_size):
        chunk = pending[start:start + cfg.chunk_size]
        records = [{**r, "code": code} for r in evaluator.evaluate(chunk, todo) if (r["case_id"], r["strength"]) not in done]
        out.append(records)
        done |= {(r["case_id"], r["strength"]) for r in records}
        existing += records
        bar.update(len(chunk))
        if on_chunk:
            on_chunk(start + len(chunk))
    bar.close()

    wanted = {c.case_id for c in cases}
    mine = [r for r in existing if r["case_id"] in wanted and r["strength"] in cfg.strengths]
    if len(mine) < len(existing):  # e.g. a smaller --limit than before: say so, never drop records
        print(f"note: {out.path} holds {len(existing) - len(mine)} record(s) outside this selection; they stay "
              f"in cases.jsonl, the summary covers the {len(cases)} selected case(s)", file=sys.stderr)
    summary = {
        "config": resolved,
        "versions": code_versions,  # of this invocation; record_code: of the records summarised
        "record_code": record_code_counts(mine, previous_versions),
        "model": lm.provenance(),
        "model_numel": sum(p.numel() for p in lm.model.parameters()),
        "data": bench.provenance(),
        "wall_seconds_this_invocation": round(time.time() - t0, 2),
        **evaluator.summarize(mine),
    }
    out.write_summary(summary)
    return summary


# ---------------------------------------------------------------------------------------------
def _fmt(agg: dict | None) -> str:
    if not agg or agg.get("mean") is None:
        return "-"
    lo, hi = agg["ci95"]
    return f"{agg['mean']:.1f} [{lo:.1f}, {hi:.1f}]"


def format_table(summary: dict) -> str:
    """Markdown table: metric rows, a pre-edit column and one post-edit column per strength."""
    points = summary["points"]
    cols = ["pre"] + [f"post s={float(s):g}" for s in points]
    metrics = list(summary["pre"])
    for p in points.values():
        metrics += [m for m in p["post"] if m not in metrics]
    lines = ["| metric | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for m in metrics:
        cells = [_fmt(summary["pre"].get(m))] + [_fmt(p["post"].get(m)) for p in points.values()]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    pre_s = next(iter(points.values()))["seconds_per_case"]["pre_eval"]
    secs = [f"{p['seconds_per_case']['fit'] + p['seconds_per_case']['eval']:.3f}" for p in points.values()]
    lines.append(f"| seconds/case (pre: eval; post: fit+eval, 0 when reused) | {pre_s:.3f} | " + " | ".join(secs) + " |")
    return "\n".join(lines)


def format_grid_table(runs: list[tuple[dict, dict]], metrics: tuple[str, ...] = ("efficacy", "generalization",
                                                                               "specificity", "score")) -> str:
    """One row per (grid point, strength): the headline metrics with 95% CIs, unedited first."""
    first = runs[0][1]
    present = [m for m in metrics if m in first["pre"]]
    lines = ["| config | strength | " + " | ".join(present) + " |", "|---|---|" + "---|" * len(present),
             "| unedited (pre-edit) | - | " + " | ".join(_fmt(first["pre"].get(m)) for m in present) + " |"]
    for point, summary in runs:
        cfg = ", ".join(f"{k}={v}" for k, v in point.items()) or "default"
        for s, p in summary["points"].items():
            lines.append(f"| {cfg} | {float(s):g} | " + " | ".join(_fmt(p["post"].get(m)) for m in present) + " |")
    return "\n".join(lines)
