"""``editbench`` command line. Errors in user input print one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from editbench import __version__
from editbench.plugins import registry
from editbench.errors import EditbenchError, io_error
from editbench.modeling.loading import DEFAULT_MODEL, list_models


def _run_plan(a: argparse.Namespace) -> list[tuple[dict, Any]]:
    """(grid point, RunConfig) per run directory, from flags or from ``--config FILE.yaml``."""
    from editbench.runs.config import load_yaml, parse_grid_flags, parse_kv, parse_methods, parse_strengths, safe_name
    from editbench.runs.runner import RunConfig

    if a.out is not None and not a.out.strip():  # with --grid, Path("") / point would be the working directory
        raise EditbenchError("--out must not be empty (leave it out for the default directory)")
    from editbench.runs.autobatch import parse_batch_size

    common = dict(model=a.model, benchmark=a.benchmark, split=a.split, limit=a.limit, seed=a.seed,
                  batch_size=parse_batch_size(a.batch_size), chunk_size=a.chunk_size, device=a.device, dtype=a.dtype,
                  generation=a.generation, max_new_tokens=a.max_new_tokens, data_root=a.data_root,
                  dataset=a.dataset, cases=a.cases, sequential=a.sequential,
                  checkpoints=_int_list(a.checkpoints, "--checkpoints"), edit_batch_size=a.edit_batch_size)
    if a.config:
        if a.param or a.grid or a.method != "unedited":
            raise EditbenchError("--config gives the methods; do not combine it with --method, --param or --grid")
        d = load_yaml(a.config)
        allowed = set(common) | {"methods", "out"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise EditbenchError(f"{a.config}: no key '{unknown[0]}' for a run config (keys: {', '.join(sorted(allowed))})")
        base_out = a.out or d.get("out")
        if not isinstance(base_out, str) or not base_out.strip():
            raise EditbenchError(f"{a.config}: needs 'out' (a directory), or pass --out")
        common.update({k: v for k, v in d.items() if k in common})
        plan = []
        for spec in parse_methods(d.get("methods")):
            for params in spec.configs():
                varying = {k: params[k] for k in spec.grid}
                out = Path(base_out) / spec.label / (safe_name(varying) if varying else "default")
                plan.append((dict(method=spec.label, **varying),
                             RunConfig(**common, method=spec.name, method_params=params, strengths=spec.strengths,
                                       out=str(out))))
        return plan
    base = parse_kv(a.param)
    grid = parse_grid_flags(a.grid)
    from editbench.runs.config import expand_grid

    plan = []
    for params in expand_grid(base, grid):  # one run directory per grid point (each resumable on its own)
        point = {k: params[k] for k in grid}
        out = a.out
        if point and a.out is not None:  # without --out, each point gets its default directory
            out = str(Path(a.out) / safe_name(point))
        plan.append((point, RunConfig(**common, method=a.method, method_params=params,
                                      strengths=parse_strengths(a.strengths), out=out)))
    return plan


def _int_list(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise EditbenchError(f"{flag} expects comma-separated integers, got {text!r}") from None


def _backend_options(a: argparse.Namespace):
    from editbench.runs.distributed import BackendOptions

    options = BackendOptions(a.backend, a.address, a.workers, a.gpus_per_worker)
    options.validate()
    return options


def _cmd_run(a: argparse.Namespace) -> int:
    from editbench.runs.distributed import open_executor
    from editbench.runs.runner import execute, format_checkpoints, format_grid_table, format_table, resolve_params

    runs = []
    options = _backend_options(a)
    plan = _run_plan(a)
    for _point, cfg in plan:  # every configuration is checked before the first one runs
        cfg.validate()
        registry.load("benchmark", cfg.benchmark)
        resolve_params(registry.load("method", cfg.method), cfg.method_params)
    with open_executor(options) as executor:  # one set of workers (each loads the model once) for the plan
        for point, cfg in plan:
            summary = execute(cfg, progress=not a.quiet, wait=a.wait, executor=executor)
            label = f" ({', '.join(f'{k}={v}' for k, v in point.items())})" if point else ""
            print(f"# {cfg.method}{label} on {cfg.benchmark}/{cfg.split}, model {cfg.model}, {summary['n_cases']} cases")
            print(format_table(summary) if "checkpoints" not in summary else
                  f"sequential: {summary['protocol']['composition']} composition, edit batch "
                  f"{summary['protocol']['edit_batch_size']}\n" + format_checkpoints(summary))
            print(f"\nresults: {cfg.out}/summary.json, per-case records: {cfg.out}/cases.jsonl\n")
            runs.append((point, summary))
    if len(runs) > 1:
        print("# grid: trade-off across configurations and strengths")
        print(format_grid_table(runs))
    return 0


def _cmd_attribute(a: argparse.Namespace) -> int:
    from pathlib import Path

    from editbench.benchmarks.counterfact import CounterFact
    from editbench.runs.config import parse_kv

    from editbench.runs.attribution_study import format_findings, run_study
    from editbench.modeling.loading import load_model

    if a.limit is not None and a.limit < 1:
        raise EditbenchError(f"limit must be >= 1, got {a.limit}")
    if a.out is not None and not a.out.strip():  # not the default directory: that is what leaving it out means
        raise EditbenchError("--out must not be empty (leave it out for the default directory)")
    bench = CounterFact(data_root=a.data_root, split=a.split)
    cases = bench.load(a.limit)
    data_sha256 = {Path(k).name: v for k, v in bench.provenance()["files"].items()}
    out = Path(a.out or f"runs/{a.model.replace('/', '__')}/attribution-{a.editor}")
    lm = load_model(a.model, device=a.device, dtype=a.dtype, seed=a.seed)
    art = run_study(lm, cases, a.editor, parse_kv(a.param), out, seed=a.seed, width=a.width, split=a.split,
                    progress=not a.quiet, wait=a.wait, data_sha256=data_sha256)
    print(format_findings(art))
    print(f"\nregion artifact: {out}/region.json (use: --method mega --param region_file={out}/region.json)")
    print(f"tables: {out}/layers.csv, heatmap: {out}/heatmap.png, per-case: {out}/cases.jsonl")
    return 0


def _cmd_sweep(a: argparse.Namespace) -> int:
    from editbench.evaluation.tradeoff import format_analysis
    from editbench.results import load_summary
    from editbench.runs.distributed import open_executor
    from editbench.runs.sweep import SweepConfig, run_sweep

    options = _backend_options(a)
    cfg = SweepConfig.load(a.config)
    if a.out is not None:
        if not a.out.strip():
            raise EditbenchError("--out must not be empty")
        cfg.out = a.out
    if a.limit is not None:
        cfg.limit = a.limit
        cfg.validate()
    if a.batch_size is not None:
        from editbench.runs.autobatch import parse_batch_size

        cfg.batch_size = parse_batch_size(a.batch_size)
    if a.utility_backend is not None or a.utility_tasks is not None:
        from editbench.evaluation.utility import with_backend

        tasks = None if a.utility_tasks is None else [t.strip() for t in a.utility_tasks.split(",")]
        cfg.utility = with_backend(cfg.utility, a.utility_backend, tasks)
    with open_executor(options) as executor:
        summary = run_sweep(cfg, progress=not a.quiet, wait=a.wait, executor=executor)
    points = load_summary(cfg.out, expect="sweep").points()
    print(format_analysis(summary, points))
    print(f"results: {cfg.out}/points.jsonl, per-item records: {cfg.out}/items.jsonl, figure: {cfg.out}/tradeoff.png")
    return 0


def _cmd_curves(a: argparse.Namespace) -> int:
    from editbench.evaluation.tradeoff import DEFAULT_BASELINE
    from editbench.report.plotting import plot_panels, sweep_axis
    from editbench.results import load_summary

    panels, baselines = [], []
    for d in a.sweeps:
        sw = load_summary(d, expect="sweep")
        panels.append((f"{sw.config.get('model')} / {sw.config.get('benchmark')}", sw.points(), sw.track,
                       sweep_axis(sw.analysis)))
        baselines.append(sw.analysis.get("baseline") or sw.config.get("baseline"))
    baseline = a.baseline or next((b for b in baselines if isinstance(b, str)), DEFAULT_BASELINE)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    for p in plot_panels(panels, Path(a.out), split=a.split, baseline=baseline):
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


def _add_backend_flags(p: argparse.ArgumentParser, items: str) -> None:
    g = p.add_argument_group("distributed execution (optional extra: pip install 'editbench[distributed]')")
    g.add_argument("--backend", default="serial",
                   help=f"serial (default) or ray: {items} computed on Ray actors that load the model once each; "
                        "this process stays the only writer of the output directory")
    g.add_argument("--address", default=None,
                   help="Ray cluster address (default $RAY_ADDRESS, else a private local instance)")
    g.add_argument("--workers", type=int, default=None,
                   help="Ray actors (default: as many as the cluster's CPUs, or GPUs / --gpus-per-worker, hold)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0,
                   help="GPUs each Ray actor reserves (fractions share a GPU); needs device cuda")


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
    r.add_argument("--batch-size", default="32", metavar="B|auto",
                   help="rows per forward pass (default 32); auto: the largest that fits on the device "
                        "(32 on a CPU), halved on an out-of-memory error (docs/cli.md)")
    r.add_argument("--chunk-size", type=int, default=8, help="cases evaluated (and saved) together")
    r.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    r.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    r.add_argument("--generation", action="store_true",
                   help="also the full-length generation fluency (fluency_long: --max-new-tokens tokens from every "
                        "generation prompt); the scope/health metrics, short-generation fluency included, always run")
    r.add_argument("--max-new-tokens", type=int, default=64, help="token budget of --generation (default 64)")
    r.add_argument("--data-root", default=None, help="data bundle root (default $EDITBENCH_DATA or ../shared/data)")
    r.add_argument("--dataset", default=None, metavar="hub:OWNER/NAME[@REV][?split=S]",
                   help="read the cases from a Hugging Face hub dataset instead of the data root's split file "
                        "(counterfact: EasyEdit or ROME columns; the split is the hub split, default train)")
    r.add_argument("--cases", default=None, metavar="with-subject-facts",
                   help="evaluate only the split's cases that have another CounterFact fact about their subject "
                        "(subject_specificity then applies to every case); --limit counts those")
    r.add_argument("--sequential", action="store_true",
                   help="many-edit protocol: the cases' edits accumulate in one model, in case order, each fitted as "
                        "the method's composition says; evaluated at --checkpoints")
    r.add_argument("--checkpoints", default=None, metavar="T1,T2,...",
                   help="with --sequential: after T edits, evaluate the first T cases and the model's health "
                        "(default 1,10,100,... and the last case)")
    r.add_argument("--edit-batch-size", type=int, default=1, metavar="B",
                   help="fit B edits at once (methods that support it: memit, alphaedit, ft); with --sequential, "
                        "batches accumulate (AlphaEdit's protocol)")
    r.add_argument("--config", default=None, metavar="FILE.yaml",
                   help="run every entry of a config's methods: list (the sweep's shape: name, params, grid, strengths)")
    r.add_argument("--wait", action="store_true", help="wait for another process writing the same --out")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_backend_flags(r, "chunks of cases (--chunk-size)")
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
    at.add_argument("--wait", action="store_true", help="wait for another process writing the same study directory")
    at.add_argument("--quiet", action="store_true")
    at.set_defaults(func=_cmd_attribute)

    sw = sub.add_parser("sweep", help="attribute-utility sweep of methods x strengths (x grids) from a YAML config")
    sw.add_argument("config")
    sw.add_argument("--out", default=None, help="override the config's output directory")
    sw.add_argument("--limit", type=int, default=None, help="override the config's held-out items per split")
    sw.add_argument("--batch-size", default=None, metavar="B|auto",
                    help="override the config's batch_size (auto: the largest that fits, halved on out-of-memory)")
    sw.add_argument("--utility-backend", default=None, help="override the config's utility backend: builtin | "
                    "lm-eval (built-in tasks become their local lm-eval tasks, arc_easy -> arc_easy_local, ...)")
    sw.add_argument("--utility-tasks", default=None, help="override the utility tasks (comma-separated names)")
    sw.add_argument("--wait", action="store_true", help="wait for another process writing the same sweep directory")
    sw.add_argument("--quiet", action="store_true")
    _add_backend_flags(sw, "sweep points")
    sw.set_defaults(func=_cmd_sweep)

    cv = sub.add_parser("curves", help="trade-off figure with one panel per sweep directory (e.g. per model)")
    cv.add_argument("sweeps", nargs="+")
    cv.add_argument("--out", required=True, help="figure path without extension (PNG and SVG are written)")
    cv.add_argument("--split", default="test", choices=["val", "test"])
    cv.add_argument("--baseline", default=None, help="method compared against (default: the sweep's baseline)")
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


def one_line(text: str) -> str:
    """An error message as one line: control characters (a newline in a crafted path) escaped."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


class Terminated(Exception):
    """SIGTERM, turned into an exception so that the same clean exit path runs as for Ctrl-C."""


def _on_sigterm(_signum, _frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    _setup_logging()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return args.func(args)
    except EditbenchError as e:
        print(f"editbench: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into a command that stopped reading (head): not an error
        return 0
    except OSError as e:  # not caught where the file is known: named by the system when it can
        print(f"editbench: error: {one_line(str(io_error(e, action='read or write')))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a leading newline ends a progress bar's line
        print("\neditbench: interrupted; finished cases are saved, rerun the same command to resume", file=sys.stderr)
        return 130
    except Terminated:
        print("\neditbench: terminated (SIGTERM); finished cases are saved, rerun the same command to resume",
              file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
