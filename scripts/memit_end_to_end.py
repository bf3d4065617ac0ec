"""How much of its residual target a single MEMIT edit realises end to end, and what that costs in
efficacy. Per case: ``z = h0 + d`` is MEMIT's target at the last layer ``L`` of its range (``h0``:
the unedited residual at the subject's last token of the rewrite prompt); after all of the range's
updates the residual there is ``h1``. The realised fraction is ``f = <h1 - h0, d> / ||d||^2``
(and the cosine of ``h1 - h0`` with ``d``). Efficacy (new target's mean token NLL below the true
one's, on the rewrite prompt) is then measured three ways: with the weight edit; with ``h0 + f d``
written into layer ``L``'s output at that token (the same realised amount, along ``d`` exactly);
and with the full ``d``. If the second matches the first and the third is ~100, the loss of
efficacy comes from how much of ``d`` is realised, and how robust ``z`` is to realising less.

    python scripts/memit_end_to_end.py results/smollm2-135m/counterfact-edit/memit --cases 20
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean

import torch

from editbench import EditRequest
from editbench.methods.memit import MEMIT, _at_subject, compute_memit_deltas, default_memit_layers
from editbench.methods.rome import second_moments, subject_position
from editbench.modeling.hooks import hooked
from editbench.modeling.loading import load_model
from editbench.modeling.scoring import ScoreRequest, score_targets
from editbench.modeling.weights import WeightEditTransaction


def margin(lm, r: EditRequest) -> float:
    """NLL(true) - NLL(new) on the rewrite prompt (> 0: the edit's target is preferred)."""
    new, true = score_targets(lm, [ScoreRequest(r.prompt, r.target_new), ScoreRequest(r.prompt, r.target_true)],
                              batch_size=1, share_prefix=False)
    return true.nll - new.nll


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a memit run directory (its config names the model and parameters)")
    ap.add_argument("--cases", type=int, default=20)
    args = ap.parse_args()
    cfg = json.loads((args.run / "config.json").read_text())
    lm = load_model(cfg["model"], dtype=cfg.get("dtype", "float32"))
    params = MEMIT.Params(**{k: (tuple(v) if k == "layers" and v is not None else v)
                             for k, v in cfg["method_params"].items()})
    layers = tuple(params.layers or default_memit_layers(lm.adapter.n_layers))
    moments = second_moments(lm, layers, params.mom2_n_tokens, params.cov_file)
    L = layers[-1]
    module = lm.adapter.layers[L]
    rows = []
    with open(args.run / "cases.jsonl", encoding="utf-8") as f:
        for line in f:
            if len(rows) == args.cases:
                break
            q = json.loads(line)["request"]
            r = EditRequest(case_id=q["case_id"], prompt=q["prompt"], subject=q["subject"],
                            target_new=q["target_new"], target_true=q["target_true"])
            det: dict = {}
            deltas = compute_memit_deltas(lm, [r], params, layers, moments, details_out=det)
            z = det["z"][:, 0].double()
            h0 = det[layers[0]]["H"][:, 0].double()  # measured before any update of the range
            d = z - h0
            with WeightEditTransaction(lm.adapter, deltas):
                h1 = _at_subject(lm, [r], {"h": module})["h"][0].double()
                m_edit = margin(lm, r)
            got = h1 - h0
            frac = float(got @ d / (d @ d))
            cos = float(torch.nn.functional.cosine_similarity(got, d, dim=0))
            pos = subject_position(lm, r.prompt, r.subject)

            def with_scaled(alpha: float) -> float:
                def write(_m, _i, out):
                    x = out[0] if isinstance(out, tuple) else out
                    x = x.clone()
                    x[:, pos] = x[:, pos] + alpha * d.to(x.dtype)
                    return (x, *out[1:]) if isinstance(out, tuple) else x
                with hooked(module, write):
                    return margin(lm, r)

            rows.append({"frac": frac, "cos": cos, "edit": m_edit, "scaled": with_scaled(frac), "full": with_scaled(1.0),
                         "unedited": margin(lm, r)})
    n = len(rows)
    es = lambda k: 100 * sum(x[k] > 0 for x in rows) / n  # noqa: E731
    print(f"{cfg['model']}, MEMIT layers {list(layers)}, {n} cases (code of this checkout; run {args.run})")
    print(f"  realised fraction of d at layer {L}: mean {mean(x['frac'] for x in rows):.3f} "
          f"(min {min(x['frac'] for x in rows):.3f}, max {max(x['frac'] for x in rows):.3f}); "
          f"cosine(h1 - h0, d) mean {mean(x['cos'] for x in rows):.3f}")
    for k, label in (("unedited", "unedited"), ("edit", "MEMIT weight edit"), ("scaled", "h0 + f d at layer L"),
                     ("full", "h0 + d at layer L (the target z)")):
        print(f"  {label:<34} efficacy {es(k):5.1f}   mean margin NLL(true)-NLL(new) {mean(x[k] for x in rows):+.2f}")


if __name__ == "__main__":
    main()
