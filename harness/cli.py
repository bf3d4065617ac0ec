"""``editbench`` command line. Errors in user input print one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys

from editbench import __version__
from editbench.plugins import registry
from editbench.errors import EditbenchError
from editbench.modeling.loading import DEFAULT_MODEL, list_models


def _params(items: list[str]) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise EditbenchError(f"--param expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _grid(items: list[str] | None) -> list[dict[str, str]]:
    """``--grid KEY=V1,V2`` (repeatable) -> every combination, as --param dicts (one {} without grid)."""
    axes = {k: [x.strip() for x in v.split(",")] for k, v in sorted(_params(items).items())}
    for k, values in axes.items():
        if not all(values):
            raise EditbenchError(f"--grid {k}= needs comma-separated values, got {','.join(values)!r}")
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def _cmd_run(a: argparse.Namespace) -> int:
    from pathlib import Path

    from editbench.runs.runner import RunConfig, execute, format_grid_table, format_table, parse_strengths

    base = _params(a.param)
    grid = _grid(a.grid)
    clash = sorted(set(base) & set(grid[0]))
    if clash:
        raise EditbenchError(f"'{clash[0]}' is given both as --param and as --grid")
    runs = []
    for point in grid:  # one run directory per grid point (each resumable on its own)
        out = a.out
        if point and a.out:
            out = str(Path(a.out) / ",".join(f"{k}={v}" for k, v in point.items()))
        cfg = RunConfig(model=a.model, benchmark=a.benchmark, split=a.split, method=a.method,
                        method_params={**base, **point}, strengths=parse_strengths(a.strengths), limit=a.limit,
                        seed=a.seed, batch_size=a.batch_size, chunk_size=a.chunk_size, device=a.device, dtype=a.dtype,
                        generation=a.generation, max_new_tokens=a.max_new_tokens, data_root=a.data_root, out=out)
        summary = execute(cfg, progress=not a.quiet)
        label = f" ({', '.join(f'{k}={v}' for k, v in point.items())})" if point else ""
        print(f"# {cfg.method}{label} on {cfg.benchmark}/{cfg.split}, model {cfg.model}, {summary['n_cases']} cases")
        print(format_table(summary))
        print(f"\nresults: {cfg.out}/summary.json, per-case records: {cfg.out}/cases.jsonl\n")
        runs.append((point, summary))
    if len(runs) > 1:
        print("# grid: trade-off across configurations and strengths")
        print(format_grid_table(runs))
    return 0


def _cmd_attribute(a: argparse.Namespace) -> int:
    from pathlib import Path

    from editbench.benchmarks.counterfact import CounterFact

    from editbench.runs.attribution_study import format_findings, run_study
    from editbench.modeling.loading import load_model

    if a.limit is not None and a.limit < 1:
        raise EditbenchError(f"limit must be >= 1, got {a.limit}")
    cases = CounterFact(data_root=a.data_root, split=a.split).load(a.limit)
    out = Path(a.out or f"runs/{a.model.replace('/', '__')}/attribution-{a.editor}")
    lm = load_model(a.model, device=a.device, dtype=a.dtype, seed=a.seed)
    art = run_study(lm, cases, a.editor, _params(a.param), out, seed=a.seed, width=a.width, split=a.split,
                    progress=not a.quiet)
    print(format_findings(art))
    print(f"\nregion artifact: {out}/region.json (use: --method mega --param region_file={out}/region.json)")
    print(f"tables: {out}/layers.csv, heatmap: {out}/heatmap.png, per-case: {out}/cases.jsonl")
    return 0


def _cmd_sweep(a: argparse.Namespace) -> int:
    from pathlib import Path

    from editbench.runs.runner import RunDir
    from editbench.runs.sweep import SweepConfig, run_sweep
    from editbench.evaluation.tradeoff import format_analysis

    cfg = SweepConfig.load(a.config)
    if a.out:
        cfg.out = a.out
    if a.limit is not None:
        cfg.limit = a.limit
    summary = run_sweep(cfg, progress=not a.quiet)
    points = RunDir(Path(cfg.out)).read_records(Path(cfg.out) / "points.jsonl")
    print(format_analysis(summary, points))
    print(f"results: {cfg.out}/points.jsonl, per-item records: {cfg.out}/items.jsonl, figure: {cfg.out}/tradeoff.png")
    return 0


def _cmd_curves(a: argparse.Namespace) -> int:
    from pathlib import Path

    from editbench.errors import DataError
    from editbench.runs.runner import RunDir
    from editbench.evaluation.tradeoff import plot_panels

    panels = []
    for d in a.sweeps:
        path = Path(d)
        if not (path / "summary.json").is_file():
            raise DataError(f"{path} is not a finished sweep directory (no summary.json)")
        summary = json.loads((path / "summary.json").read_text())
        points = RunDir(path).read_records(path / "points.jsonl", truncate=False)
        panels.append((f"{summary['config']['model']} / {summary['config']['benchmark']}", points,
                       summary["config"]["track"]))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    for p in plot_panels(panels, Path(a.out), split=a.split, baseline=a.baseline):
        print(p)
    return 0


def _cmd_list(kind: str) -> int:
    for name, desc in registry.describe(kind).items():
        print(f"{name:16s} {desc}")
    return 0


def _cmd_models(_a) -> int:
    for name, desc in list_models().items():
        print(f"{name:16s} {desc}")
    print("(any Hugging Face model id or local directory also works, e.g. gpt2-xl, meta-llama/Llama-2-7b-hf)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="editbench", description="Benchmark harness for LLM behaviour-editing methods")
    p.add_argument("--version", action="version", version=f"editbench {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="evaluate a method on a benchmark")
    r.add_argument("--model", default=DEFAULT_MODEL, help=f"embedded alias, tiny-*, hub id or directory (default {DEFAULT_MODEL})")
    r.add_argument("--benchmark", default="counterfact")
    r.add_argument("--split", default=None, help="benchmark split (counterfact: edit [default], train, val, rome500)")
    r.add_argument("--method", default="unedited")
    r.add_argument("--param", action="append", metavar="KEY=VALUE", help="method hyperparameter (repeatable)")
    r.add_argument("--strengths", default="1", help="comma-separated strengths, e.g. 0.25,0.5,1,2")
    r.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                   help="hyperparameter grid (repeatable): one run per combination, under --out/KEY=V,...")
    r.add_argument("--limit", type=int, default=None, help="first N cases only")
    r.add_argument("--out", default=None, help="run directory (default runs/MODEL/BENCH-SPLIT/METHOD); resumes if present")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--chunk-size", type=int, default=32, help="cases evaluated (and written) together")
    r.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    r.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    r.add_argument("--generation", action="store_true", help="also generate from generation prompts (fluency)")
    r.add_argument("--max-new-tokens", type=int, default=64)
    r.add_argument("--data-root", default=None, help="data bundle root (default $EDITBENCH_DATA or ../shared/data)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_run)

    at = sub.add_parser("attribute", help="post-edit NLKA attribution study; writes MEGA's region artifact")
    at.add_argument("--model", default=DEFAULT_MODEL)
    at.add_argument("--editor", default="ft", help="reference weight editor (a method plugin)")
    at.add_argument("--param", action="append", metavar="KEY=VALUE", help="editor hyperparameter (repeatable)")
    at.add_argument("--split", default="train", help="CounterFact split to study (default train: disjoint from edit)")
    at.add_argument("--limit", type=int, default=100)
    at.add_argument("--width", type=int, default=None, help="region width in layers (default n_layers/6)")
    at.add_argument("--out", default=None)
    at.add_argument("--seed", type=int, default=0)
    at.add_argument("--device", default="cpu")
    at.add_argument("--dtype", default="float32")
    at.add_argument("--data-root", default=None)
    at.add_argument("--quiet", action="store_true")
    at.set_defaults(func=_cmd_attribute)

    sw = sub.add_parser("sweep", help="attribute-utility sweep of methods x strengths (x grids) from a YAML config")
    sw.add_argument("config")
    sw.add_argument("--out", default=None, help="override the config's output directory")
    sw.add_argument("--limit", type=int, default=None, help="override the config's held-out items per split")
    sw.add_argument("--quiet", action="store_true")
    sw.set_defaults(func=_cmd_sweep)

    cv = sub.add_parser("curves", help="trade-off figure with one panel per sweep directory (e.g. per model)")
    cv.add_argument("sweeps", nargs="+")
    cv.add_argument("--out", required=True, help="figure path without extension (PNG and SVG are written)")
    cv.add_argument("--split", default="test", choices=["val", "test"])
    cv.add_argument("--baseline", default="steering")
    cv.set_defaults(func=_cmd_curves)

    from editbench.report import compare
    from editbench.report import report; report.add_subcommand(sub); compare.add_subcommand(sub)  # noqa: E702
    from editbench.plugins.scaffold import add_subcommands as plugin_kit; plugin_kit(sub)  # noqa: E702 - check-method, new-method
    sub.add_parser("methods", help="list registered methods").set_defaults(func=lambda a: _cmd_list("method"))
    sub.add_parser("benchmarks", help="list registered benchmarks").set_defaults(func=lambda a: _cmd_list("benchmark"))
    sub.add_parser("models", help="list embedded and test models").set_defaults(func=_cmd_models)
    return p


def _setup_logging() -> None:
    """Our own warnings as `editbench: ...` lines; the hub client's per-retry network warnings are
    left out (a failed load still ends in one `editbench: error:` line saying why)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("editbench: %(message)s"))
    for name in ("editbench",):
        lg = logging.getLogger(name)
        if not lg.handlers:
            lg.addHandler(handler)
            lg.setLevel(logging.WARNING)
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    _setup_logging()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EditbenchError as e:
        print(f"editbench: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # file-system trouble (path is a file, permission, disk full): one line
        print(f"editbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("editbench: interrupted; finished cases are saved, rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
