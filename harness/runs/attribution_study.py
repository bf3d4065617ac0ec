"""Post-edit attribution study (MEGA's analysis, [recon]): which layers' attention and MLP blocks
promote the new target and suppress the old one on *successful* vs *failed* edits of a reference
weight editor, and the attention region MEGA should steer.

For each case: fit the editor, apply it, record success (efficacy on the rewrite prompt:
nll(o) > nll(o*)), and compute NLKA block importances at the rewrite prompt's last token on the
edited model for o* (promote = Imp) and o (suppress = -Imp). Outputs under ``--out``: per-case
``cases.jsonl``, ``layers.csv``, ``heatmap.png/.svg`` and the reusable ``region.json`` artifact.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from editbench.plugins import registry
from editbench.modeling.attribution import block_importance, select_region
from editbench.errors import ConfigError
from editbench.report.figures import save_figure
from editbench.modeling.loading import LoadedModel
from editbench.runs.provenance import versions
from editbench import results
from editbench.runs.rundir import ResultDir
from editbench.modeling.scoring import ScoreRequest, score_targets

CASES = "cases.jsonl"
PANELS = (("promote_new", "promote o*  (Imp for o*)"), ("suppress_old", "suppress o  (-Imp for o)"))


def study_case(lm: LoadedModel, editor, case) -> dict:
    r = case.request
    iv = editor.fit_edit(r)
    outer, per_batch = iv.uniform(lm, 1.0)
    if per_batch is not None:  # e.g. MEGA: its vectors depend on each prompt's positions and gate
        raise ConfigError(f"attribute: editor '{editor.name}' edits per prompt (position- or gate-dependent "
                          "activations); the study needs a whole-model edit: use a weight editor (ft, steer2edit) "
                          "or steering")
    with outer:
        new, true = score_targets(lm, [ScoreRequest(r.prompt, r.target_new), ScoreRequest(r.prompt, r.target_true)])
        imp = block_importance(lm, [r.prompt, r.prompt], [r.target_new, r.target_true])
    return {"case_id": case.case_id, "success": bool(true.nll > new.nll), "nll_new": new.nll, "nll_true": true.nll,
            "promote_new": {b: imp[b][:, 0].tolist() for b in ("attn", "mlp")},
            "suppress_old": {b: (-imp[b][:, 1]).tolist() for b in ("attn", "mlp")}}


def layer_table(records: Sequence[dict], n_layers: int) -> dict:
    """Mean importance per (panel, block, outcome, layer); NaN where an outcome has no cases."""
    out: dict = {}
    for panel, _ in PANELS:
        for b in ("attn", "mlp"):
            for outcome, flag in (("success", True), ("failure", False)):
                rows = [r[panel][b] for r in records if r["success"] == flag]
                out[(panel, b, outcome)] = np.mean(rows, axis=0) if rows else np.full(n_layers, np.nan)
    return out


def draw(table: dict, n_layers: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, axes = plt.subplots(2, 2, figsize=(max(8, n_layers * 0.35), 4.5), sharex=True)
    vmax = np.nanmax([np.nanmax(np.abs(v)) for v in table.values() if np.isfinite(v).any()] + [1e-6])
    for i, (panel, title) in enumerate(PANELS):
        for j, outcome in enumerate(("success", "failure")):
            data = np.stack([table[(panel, "attn", outcome)], table[(panel, "mlp", outcome)]])
            sns.heatmap(data, ax=axes[i, j], cmap="RdBu_r", center=0, vmin=-vmax, vmax=vmax,
                        yticklabels=["attention", "MLP"], xticklabels=list(range(n_layers)),
                        cbar=(j == 1), cbar_kws={"label": "nats"} if j == 1 else None)
            axes[i, j].set_title(f"{title} - {outcome}", fontsize=9)
            axes[i, j].tick_params(axis="x", labelsize=6)
    for ax in axes[1]:
        ax.set_xlabel("layer")
    fig.tight_layout()
    save_figure(fig, path.with_suffix(".png"), dpi=130)
    save_figure(fig, path.with_suffix(".svg"))
    plt.close(fig)


def run_study(lm: LoadedModel, cases, editor_name: str, editor_params: dict, out: Path, seed: int = 0,
              width: int | None = None, split: str = "", progress: bool = True, wait: bool = False,
              data_sha256: dict | None = None) -> dict:
    """Run (or resume) the study in ``out`` (held under its writer lock for the whole call);
    ``data_sha256`` ({file name: sha256} of the cases' source) is checked on resume."""
    with ResultDir(out).writing(wait=wait) as rd:
        return _run_study(rd, lm, cases, editor_name, editor_params, Path(out), seed, width, split, progress,
                          data_sha256 or {})


def _run_study(rd: ResultDir, lm: LoadedModel, cases, editor_name: str, editor_params: dict, out: Path, seed: int,
               width: int | None, split: str, progress: bool, data_sha256: dict) -> dict:
    from tqdm.auto import tqdm

    from editbench.evaluation.evaluator import seed_everything

    n = lm.adapter.n_layers
    if width is not None and not 1 <= width <= n - int(0.4 * n):
        raise ConfigError(f"attribute: --width must be between 1 and {n - int(0.4 * n)} (the layers at >= 40% "
                          f"depth of this {n}-layer model), got {width}")
    editor = registry.load("method", editor_name)(lm, editor_params, seed=seed)
    config = {"kind": "attribution", "model": lm.model_id, "editor": editor_name, "split": split,
              "editor_params": json.loads(json.dumps(dataclasses.asdict(editor.params), default=str)), "seed": seed,
              "width": width, "weights_sha256": lm.provenance().get("weights_sha256"),
              "data_sha256": data_sha256}
    required = {"case_id": (int, str), "success": bool, "promote_new": dict, "suppress_old": dict}
    rd.check_records(CASES, required)  # a malformed file is refused before config.json is rewritten
    rd.check_or_write_config(config, keys=("kind", "model", "editor", "split", "editor_params", "seed"),
                             provenance_keys=("weights_sha256", "data_sha256"))
    records = rd.load_records(CASES, required=required)
    done = {r["case_id"] for r in records}
    bar = tqdm([c for c in cases if c.case_id not in done], desc=f"attribution ({editor_name})",
               unit="case", disable=not progress)
    try:  # closed before an interrupt's message is printed
        for case in bar:
            seed_everything(seed)
            rec = study_case(lm, editor, case)
            rd.append(CASES, [rec])
            records.append(rec)
    finally:
        bar.close()
    wanted = {c.case_id for c in cases}
    records = [r for r in records if r["case_id"] in wanted]
    n = lm.adapter.n_layers
    table = layer_table(records, n)
    n_succ = sum(r["success"] for r in records)
    gap = table[("promote_new", "attn", "success")] - table[("promote_new", "attn", "failure")]
    basis = "success-minus-failure gap"
    if not np.isfinite(gap).any():  # only one outcome observed: fall back to successes' promotion
        gap, basis = table[("promote_new", "attn", "success" if n_succ else "failure")], "promotion (one outcome only)"
    region = select_region(gap, n, width)
    with open(out / "layers.csv", "w", newline="") as f:
        w = csv.writer(f)
        keys = list(table)
        w.writerow(["layer"] + ["/".join(k) for k in keys])
        for l in range(n):
            w.writerow([l] + [f"{table[k][l]:.6f}" for k in keys])
    draw(table, n, out / "heatmap")
    half = n // 2

    def mean(v):  # None (JSON null) where an outcome has no cases
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            m = float(np.nanmean(v))
        return None if np.isnan(m) else m

    findings = {
        "n_cases": len(records), "n_success": n_succ, "n_failure": len(records) - n_succ,
        "attn_promote_new_late_success": mean(table[("promote_new", "attn", "success")][half:]),
        "attn_promote_new_late_failure": mean(table[("promote_new", "attn", "failure")][half:]),
        "attn_promote_new_early_success": mean(table[("promote_new", "attn", "success")][:half]),
        "mlp_promote_new_late_success": mean(table[("promote_new", "mlp", "success")][half:]),
        "attn_suppress_old_late_success": mean(table[("suppress_old", "attn", "success")][half:]),
        "mlp_suppress_old_late_success": mean(table[("suppress_old", "mlp", "success")][half:]),
    }
    artifact = {"region": region, "selection": basis, "gap_per_layer": [None if np.isnan(x) else float(x) for x in gap],
                "model": lm.provenance(), "config": config, "findings": findings, "versions": versions()}
    results.write_json(out / "region.json", artifact)
    rd.write_summary(artifact, "attribution")
    return artifact



def format_findings(a: dict) -> str:
    f = {k: (v if v is not None else float("nan")) for k, v in a["findings"].items()}
    lines = [f"cases {f['n_cases']}: {f['n_success']} successful, {f['n_failure']} failed edits",
             f"mean NLKA (nats) over the later half of layers, attention promoting o*: "
             f"success {f['attn_promote_new_late_success']:+.3f}, failure {f['attn_promote_new_late_failure']:+.3f}"
             f" (earlier half, success: {f['attn_promote_new_early_success']:+.3f})",
             f"later half on successful edits: MLP promoting o* {f['mlp_promote_new_late_success']:+.3f}; "
             f"suppressing o: attention {f['attn_suppress_old_late_success']:+.3f}, MLP {f['mlp_suppress_old_late_success']:+.3f}",
             f"selected MEGA region (attention layers, by {a['selection']}): {a['region']}"]
    gap = f["attn_promote_new_late_success"] - f["attn_promote_new_late_failure"]
    if gap == gap:  # not NaN: both outcomes present
        verdict = "yes" if gap > 0 else "no"
        lines.append(f"does later-half attention promote o* more on successful than on failed edits? {verdict} "
                     f"(success - failure {gap:+.3f} nats)")
    else:
        lines.append("success vs failure comparison: not available (all edits succeeded or all failed)")
    return "\n".join(lines)
