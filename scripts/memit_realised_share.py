"""How much of its residual share one MEMIT edit realises per layer: ``Delta W_l k = R_l * s`` with
``s = k^T (lambda C_l + k k^T)^-1 k`` in (0, 1), so ``s`` is the realised fraction for a single edit.
Prints its mean over a run's first cases, per layer, for each ``lambda`` (mom2_update_weight).

    python scripts/memit_realised_share.py results/smollm2-135m/counterfact-edit/memit --cases 10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from editbench import EditRequest
from editbench.methods.memit import default_memit_layers
from editbench.methods.rome import second_moments, subject_keys
from editbench.modeling.loading import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a memit run directory (its config names the model and parameters)")
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--lambdas", default="15000,1000,1", help="mom2_update_weight values, comma-separated")
    args = ap.parse_args()
    cfg = json.loads((args.run / "config.json").read_text())
    params = cfg["method_params"]
    lm = load_model(cfg["model"], dtype=cfg.get("dtype", "float32"))
    layers = params.get("layers") or default_memit_layers(lm.adapter.n_layers)
    moments = second_moments(lm, layers, params["mom2_n_tokens"], params.get("cov_file"))
    requests = []
    with open(args.run / "cases.jsonl", encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)["request"]
            requests.append(EditRequest(case_id=q["case_id"], prompt=q["prompt"], subject=q["subject"],
                                        target_new=q["target_new"], target_true=q["target_true"]))
            if len(requests) == args.cases:
                break
    keys = [subject_keys(lm, r, layers) for r in requests]
    print(f"{cfg['model']}, MEMIT layers {list(layers)}, {len(requests)} cases: mean realised share per layer")
    for lam in (float(v) for v in args.lambdas.split(",")):
        share = {}
        for l in layers:
            vals = []
            for ks in keys:
                k = ks[l].double()
                A = lam * moments[l].double() + torch.outer(k, k)
                vals.append(float(k @ torch.linalg.solve(A, k)))
            share[l] = sum(vals) / len(vals)
        print(f"  mom2_update_weight {lam:g}: " + ", ".join(f"layer {l} {s:.3f}" for l, s in share.items()))


if __name__ == "__main__":
    main()
