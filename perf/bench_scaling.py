"""How each method's cost scales with model size: fit and evaluation seconds per case and peak
memory above the weights on random-initialised model shapes, and the log-log slope of time
against parameter count.

    OMP_NUM_THREADS=1 python perf/bench_scaling.py [--shapes llama-30m,llama-135m,llama-360m]
        [--methods rome,steering] [--dtypes float32,bfloat16] [--device cpu|cuda] [--cases 2]
        [--max-params 400M] [--mom2-tokens 4096] [--json out.json]

Shapes (:data:`SHAPES`): Llama configs with a 49,152-token vocabulary and tied embeddings
(``llama-30m``; ``llama-135m`` and ``llama-360m`` = SmolLM2-135M / -360M's shapes; ``llama-1b``;
``llama-8b`` = Llama-3-8B's layers), ``gemma3-270m`` (Gemma-3-270M's shape, vocabulary 262,144), and
``tiny`` / ``tiny-x4`` (0.2M / 0.85M parameters, for tests). Default: llama-30m to llama-1b and
gemma3-270m. Weights are HF's random init (seed 0, std 0.02), *not* rescaled as the tiny test
models are; the byte tokenizer of the tiny models serves every shape.

The cases (``--cases`` CounterFact ``edit`` cases) are loaded once. Each (shape, dtype, method) then
runs in a fresh subprocess with an empty ``$EDITBENCH_CACHE`` of its own: build the model in its
dtype on its device, construct the method (``setup s``: e.g. ROME's key second moment), ``fit_edit``
each case alone (``fit s/case``), then score the fitted edits with the knowledge-edit evaluator at
strength 1 (``eval s/case``: ROME/EasyEdit metrics, scope tests, health probes). Memory: the peak
RSS (VmHWM, reset through /proc/self/clear_refs right after the build; ``ru_maxrss`` elsewhere) and
on CUDA ``max_memory_allocated``, minus the value right after the build (weights + runtime): what
fitting and evaluating add, in MB and as % of the weights' bytes. Slopes of log(seconds) against
log(parameters) are fitted per method and dtype over the shapes measured. Flagged: slopes above
1.15, memory above 25% of the weights.

Caveats. Random weights: time and memory are what scale, not edit quality. So that every shape
does the same work, rome / memit / alphaedit estimate their key second moment from only
``--mom2-tokens`` (default 4096, not 100,000) wikitext tokens (setup time is then not
representative), and early stopping (``stop_loss``, ``stop_nll``) is off: every optimisation runs all
its steps (``--early-stop`` keeps the methods' defaults). Parameter counts include embeddings, so
``gemma3-270m`` (168M of its 268M parameters are the embedding) lies off the Llama line: fit slopes
over one family (``--shapes``). On a shared machine timings vary; fix the threads with
``OMP_NUM_THREADS``. Bad input, and a shape whose weights (in the widest ``--dtypes``) exceed the free
host (CUDA: GPU) memory, are refused before anything runs: one ``editbench: error:`` line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn, Sequence

RESULT_TAG = "BENCH_SCALING_RESULT "
SLOPE_FLAG = 1.15  # a fitted log-log slope above this is flagged (superlinear)
MEMORY_FLAG = 25.0  # peak memory above this percentage of the weights is flagged
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
BYTE_TOKENS = 257  # the byte tokenizer's ids (256 bytes + <eos>): a subset of every shape's vocab

_LLAMA_VOCAB = 49152
#: name -> (family, sizes). Llama shapes share a 49,152-token vocabulary and tied embeddings.
SHAPES: dict[str, tuple[str, dict[str, int]]] = {
    "tiny": ("llama", dict(vocab_size=1024, hidden_size=64, num_hidden_layers=4, intermediate_size=128,
                           num_attention_heads=4, num_key_value_heads=2)),
    "tiny-x4": ("llama", dict(vocab_size=2048, hidden_size=128, num_hidden_layers=4, intermediate_size=256,
                              num_attention_heads=4, num_key_value_heads=2)),
    "llama-30m": ("llama", dict(vocab_size=_LLAMA_VOCAB, hidden_size=384, num_hidden_layers=8,
                                intermediate_size=1024, num_attention_heads=6, num_key_value_heads=2)),
    "llama-135m": ("llama", dict(vocab_size=_LLAMA_VOCAB, hidden_size=576, num_hidden_layers=30,
                                 intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3)),
    "llama-360m": ("llama", dict(vocab_size=_LLAMA_VOCAB, hidden_size=960, num_hidden_layers=32,
                                 intermediate_size=2560, num_attention_heads=15, num_key_value_heads=5)),
    "llama-1b": ("llama", dict(vocab_size=_LLAMA_VOCAB, hidden_size=1536, num_hidden_layers=24,
                               intermediate_size=6144, num_attention_heads=16, num_key_value_heads=16)),
    "llama-8b": ("llama", dict(vocab_size=_LLAMA_VOCAB, hidden_size=4096, num_hidden_layers=32,
                               intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8)),
    "gemma3-270m": ("gemma3", dict(vocab_size=262144, hidden_size=640, num_hidden_layers=18,
                                   intermediate_size=2048, num_attention_heads=4, num_key_value_heads=1,
                                   head_dim=256)),
}
DEFAULT_SHAPES = ("llama-30m", "llama-135m", "llama-360m", "llama-1b", "gemma3-270m")


class UsageError(Exception):
    """Bad input: printed as one ``editbench: error:`` line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's usage + message, as one line
        raise UsageError(message)


def _fail(message: str) -> NoReturn:
    raise UsageError(message)


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------
def build_config(shape: str):
    import transformers as T

    family, sizes = SHAPES[shape]
    special = dict(bos_token_id=BYTE_TOKENS - 1, eos_token_id=BYTE_TOKENS - 1, pad_token_id=BYTE_TOKENS - 1,
                   tie_word_embeddings=True)
    if family == "gemma3":
        return T.Gemma3TextConfig(**sizes, **special, max_position_embeddings=32768, sliding_window=512,
                                  query_pre_attn_scalar=sizes["head_dim"])
    return T.LlamaConfig(**sizes, **special, max_position_embeddings=256 if shape.startswith("tiny") else 2048)


def count_params(shape: str) -> int:
    """Exact parameter count (tied embeddings counted once), from a build on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(build_config(shape))
    return sum(p.numel() for p in model.parameters())


def parse_count(text: str) -> int:
    """``400M``, ``1.5B``, ``250k`` or a plain integer."""
    units = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}
    t = text.strip().lower()
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        _fail(f"--max-params: expected a count such as 400M or 1.5B, got {text!r}")
    if not math.isfinite(value) or value <= 0:
        _fail(f"--max-params must be a positive count, got {text!r}")
    return int(value)


def human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


def available_memory(device: str) -> int:
    """Bytes free for the weights: the GPU's free memory on CUDA, else the host's available memory
    (psutil when installed, else MemAvailable of /proc/meminfo; unknown: no limit)."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    available = _proc_kib("/proc/meminfo", "MemAvailable:")
    return sys.maxsize if available is None else available


def _proc_kib(path: str, key: str) -> int | None:
    """The ``key: N kB`` line of a Linux /proc file, in bytes (None where there is no such file)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------------
# Worker: one (shape, dtype, method) measurement in its own process
# ---------------------------------------------------------------------------------------------
def _rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    """The process's peak RSS in bytes: VmHWM of /proc/self/status on Linux (``ru_maxrss`` there
    starts at the parent's peak after fork + exec, and clear_refs does not reset that part), else
    ``getrusage(RUSAGE_SELF).ru_maxrss``."""
    import resource

    peak = _proc_kib("/proc/self/status", "VmHWM:")
    if peak is not None:
        return peak
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kb) if sys.platform == "darwin" else int(kb) * 1024  # bytes on macOS, KiB on Linux


def _reset_peak(cuda: bool) -> bool:
    """Reset the peak RSS (Linux: ``5`` to /proc/self/clear_refs resets VmHWM) and the CUDA peak.
    Returns whether the RSS peak could be reset."""
    import gc

    import torch

    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _peak_rss() <= _rss() * 1.05 + (8 << 20)


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


class Fitted:
    """The fitted edits, handed to the evaluator in place of the method (evaluation alone is timed)."""

    def __init__(self, method, ivs: dict):
        self.name, self.supports, self._ivs = method.name, method.supports, ivs

    def fit_edit(self, request):
        return self._ivs[request.case_id]


def run_worker(spec: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from editbench.evaluation.evaluator import KnowledgeEditEvaluator, seed_everything
    from editbench.evaluation.scope import neutral_windows
    from editbench.modeling.arch import ArchAdapter
    from editbench.modeling.loading import LoadedModel, byte_tokenizer, resolve_device, resolve_dtype
    from editbench.plugins import registry

    hf_logging.set_verbosity_error()
    shape, dtype_name, name = spec["shape"], spec["dtype"], spec["method"]
    dev, dt = resolve_device(spec["device"]), resolve_dtype(dtype_name)
    cuda = dev.type == "cuda"
    seed_everything(0)
    t = time.perf_counter()
    with torch.device(dev):  # built in place, in its dtype: no float32 or host copy to skew the peak
        model = AutoModelForCausalLM.from_config(build_config(shape), dtype=dt)
    model.eval().requires_grad_(False)
    tok = byte_tokenizer()
    lm = LoadedModel(model=model, tokenizer=tok, adapter=ArchAdapter(model), model_id=f"random-{shape}",
                     weights_hash=f"random-{shape}-seed0", source="random init (seed 0)")
    build_s = time.perf_counter() - t
    with open(spec["cases_file"], "rb") as f:  # loaded once by the parent; before the baseline: not counted
        cases = pickle.load(f)
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    weight_bytes += sum(b.numel() * b.element_size() for b in model.buffers())
    # warm-up, not counted: the method's module and the evaluator's neutral text (it imports `datasets`,
    # ~100 MB of RSS that does not depend on the model)
    cls = registry.load("method", name)
    neutral_windows(lm, None)
    reset = _reset_peak(cuda)
    base_rss = _rss() if reset else _peak_rss()
    base_cuda = torch.cuda.memory_allocated() if cuda else 0

    t = time.perf_counter()
    method = cls(lm, spec["method_params"])
    _sync(cuda)
    setup_s = time.perf_counter() - t
    ivs, fit_s = {}, []
    for c in cases:
        seed_everything(0)
        t = time.perf_counter()
        ivs[c.case_id] = method.fit_edit(c.request)
        _sync(cuda)
        fit_s.append(time.perf_counter() - t)
    peak_fit = _peak_rss() - base_rss
    peak_fit_cuda = torch.cuda.max_memory_allocated() - base_cuda if cuda else 0

    evaluator = KnowledgeEditEvaluator(lm, Fitted(method, ivs), strengths=(1.0,), batch_size=spec["batch_size"])
    t = time.perf_counter()
    records = evaluator.evaluate(cases)
    _sync(cuda)
    eval_s = (time.perf_counter() - t) / len(cases)
    if len(records) != len(cases):
        raise RuntimeError(f"the evaluator returned {len(records)} records for {len(cases)} cases")
    peak = max(peak_fit, _peak_rss() - base_rss)
    peak_cuda = max(peak_fit_cuda, torch.cuda.max_memory_allocated() - base_cuda) if cuda else 0
    above = peak_cuda if cuda else peak
    return {
        "shape": shape, "family": SHAPES[shape][0], "params": params, "dtype": dtype_name, "method": name,
        "device": str(dev), "cases": len(cases), "threads": torch.get_num_threads(), "status": "ok",
        "method_params": spec["method_params"], "batch_size": spec["batch_size"],
        "build_s": build_s, "setup_s": setup_s, "fit_s_per_case": sum(fit_s) / len(fit_s), "fit_s": fit_s,
        "eval_s_per_case": eval_s, "weight_bytes": weight_bytes, "rss_after_build": base_rss,
        "peak_reset": reset, "peak_above_bytes": above, "peak_above_pct": 100.0 * above / weight_bytes,
        "peak_rss_above_bytes": peak, "peak_rss_fit_above_bytes": peak_fit,
        "peak_cuda_above_bytes": peak_cuda, "peak_cuda_fit_above_bytes": peak_fit_cuda,
    }


def worker_main(payload: str) -> int:
    spec = json.loads(payload)
    with tempfile.TemporaryDirectory(prefix="bench-scaling-cache-") as cache:
        os.environ["EDITBENCH_CACHE"] = cache  # this method's own statistics, none left behind
        row = run_worker(spec)
    print(RESULT_TAG + json.dumps(row), flush=True)
    return 0


def measure(spec: dict, timeout: float | None) -> dict:
    """Run one measurement in a fresh interpreter; a failure becomes a row with its reason."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "status": f"failed: timed out after {timeout:g} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    why = lines[-1].strip().removeprefix("editbench: error: ") if lines else f"exit code {proc.returncode}"
    if proc.returncode < 0:
        why = f"killed by signal {-proc.returncode} (out of memory?)"
    return {**spec, "status": f"failed: {why[:200]}"}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def slope(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope and r^2 of log(y) against log(x)."""
    from scipy.stats import linregress

    fit = linregress([math.log(x) for x in xs], [math.log(max(y, 1e-9)) for y in ys])
    return float(fit.slope), float(fit.rvalue) ** 2


def slopes(rows: Sequence[dict]) -> list[dict]:
    out = []
    keys = dict.fromkeys((r["method"], r["dtype"]) for r in rows if r["status"] == "ok")
    for method, dtype in keys:
        mine = sorted((r for r in rows if r["status"] == "ok" and (r["method"], r["dtype"]) == (method, dtype)),
                      key=lambda r: r["params"])
        if len({r["params"] for r in mine}) < 2:
            continue
        ps = [r["params"] for r in mine]
        entry: dict[str, Any] = {"method": method, "dtype": dtype, "shapes": [r["shape"] for r in mine]}
        for what in ("fit", "eval"):
            entry[f"{what}_slope"], entry[f"{what}_r2"] = slope(ps, [r[f"{what}_s_per_case"] for r in mine])
        out.append(entry)
    return out


def print_report(rows: Sequence[dict], fitted: Sequence[dict]) -> None:
    head = ["shape", "params", "dtype", "method", "setup s", "fit s/case", "eval s/case", "peak MB>weights",
            "% weights"]
    ok = [[r["shape"], human(r["params"]), r["dtype"], r["method"], f"{r['setup_s']:.3f}",
           f"{r['fit_s_per_case']:.3f}", f"{r['eval_s_per_case']:.3f}", f"{r['peak_above_bytes'] / 2**20:.1f}",
           f"{r['peak_above_pct']:.1f}"] if r["status"] == "ok" else None for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in ok if c]) for i, h in enumerate(head)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print(line(head))
    for r, cells in zip(rows, ok):
        if cells is None:  # a failed measurement: its reason after the first four columns
            print(line([r["shape"], human(r["params"]), r["dtype"], r["method"]]) + "  " + r["status"])
        else:
            flag = r["peak_above_pct"] > MEMORY_FLAG
            print(line(cells) + (f"  [memory > {MEMORY_FLAG:g}% of weights]" if flag else ""))
    if not fitted:
        print("log-log slopes: none (fewer than 2 shapes measured for every method and dtype)")
    for s in fitted:
        flags = [w for w in ("fit", "eval") if s[f"{w}_slope"] > SLOPE_FLAG]
        print(f"slope {s['method']} {s['dtype']}: fit {s['fit_slope']:.2f} (r2 {s['fit_r2']:.2f}), "
              f"eval {s['eval_slope']:.2f} (r2 {s['eval_r2']:.2f}) over {len(s['shapes'])} shapes"
              + (f"  [{' and '.join(flags)} superlinear: slope > {SLOPE_FLAG}]" if flags else ""))


# ---------------------------------------------------------------------------------------------
def _split(text: str, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        _fail(f"{what}: empty list")
    return list(dict.fromkeys(items))


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="bench_scaling.py", description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=",".join(DEFAULT_SHAPES), help=f"comma list of: {', '.join(SHAPES)}")
    ap.add_argument("--methods", default=None, help="comma list (default: every method that supports edits)")
    ap.add_argument("--dtypes", default="float32", help="comma list: float32, bfloat16, float16")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--cases", type=int, default=2, help="CounterFact edit cases per measurement")
    ap.add_argument("--max-params", default=None, help="skip shapes with more parameters (e.g. 400M, 1.5B)")
    ap.add_argument("--mom2-tokens", type=int, default=4096, help="mom2_n_tokens of rome / memit / alphaedit")
    ap.add_argument("--early-stop", action="store_true", help="keep the methods' early stopping (default: off)")
    ap.add_argument("--param", action="append", default=[], metavar="METHOD.KEY=VALUE",
                    help="a hyperparameter of one method (repeatable)")
    ap.add_argument("--batch-size", type=int, default=32, help="evaluator batch size")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per measurement (default: none)")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write every row and slope as JSON")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return ap


def plan(a: argparse.Namespace) -> tuple[list[dict], list[tuple[str, str]]]:
    """Validate everything before any measurement; the specs to run and the shapes skipped."""
    if a.cases < 1:
        _fail(f"--cases must be >= 1, got {a.cases}")
    if a.mom2_tokens < 1:
        _fail(f"--mom2-tokens must be >= 1, got {a.mom2_tokens}")
    if a.batch_size < 1:
        _fail(f"--batch-size must be >= 1, got {a.batch_size}")
    if a.timeout is not None and not a.timeout > 0:
        _fail(f"--timeout must be > 0, got {a.timeout}")
    from editbench.dtypes import normalize_dtype
    from editbench.errors import EditbenchError

    try:
        dtypes = list(dict.fromkeys(normalize_dtype(d) for d in _split(a.dtypes, "--dtypes")))
    except EditbenchError as e:
        _fail(f"--dtypes: {e}")
    shapes = _split(a.shapes, "--shapes")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        _fail(f"unknown shape '{unknown[0]}' (known: {', '.join(SHAPES)})")
    max_params = parse_count(a.max_params) if a.max_params is not None else None

    from editbench.modeling.loading import resolve_device
    from editbench.plugins import registry
    from editbench.plugins.method import parse_params

    device = str(resolve_device(a.device))
    names = _split(a.methods, "--methods") if a.methods else [
        n for n in registry.names("method") if "edit" in getattr(registry.load("method", n), "supports", ())]
    classes = {n: registry.load("method", n) for n in names}
    for n, cls in classes.items():
        if "edit" not in getattr(cls, "supports", ()):
            _fail(f"method '{n}' does not support knowledge edits")
    given: dict[str, dict[str, str]] = {n: {} for n in names}
    for item in a.param:
        key, eq, value = item.partition("=")
        m, dot, k = key.partition(".")
        if not (eq and dot and m and k):
            _fail(f"--param: expected METHOD.KEY=VALUE, got {item!r}")
        if m not in given:
            _fail(f"--param {item!r}: method '{m}' is not among the methods measured")
        given[m][k] = value
    params: dict[str, dict[str, Any]] = {}
    for n, cls in classes.items():
        fields = {f for f in getattr(cls.Params, "__dataclass_fields__", {})}
        p: dict[str, Any] = {}
        if "mom2_n_tokens" in fields:
            p["mom2_n_tokens"] = a.mom2_tokens
        if not a.early_stop:
            p.update({k: 0.0 for k in ("stop_loss", "stop_nll") if k in fields})
        p.update(given[n])
        parse_params(cls.Params, p, n)  # a bad hyperparameter is refused now, not in every worker
        params[n] = p

    counts = {s: count_params(s) for s in shapes}
    skipped = [(s, f"{human(counts[s])} parameters > --max-params") for s in shapes
               if max_params is not None and counts[s] > max_params]
    shapes = [s for s in shapes if not (max_params is not None and counts[s] > max_params)]
    if not shapes:
        _fail(f"every shape has more than --max-params {a.max_params} parameters")
    free = available_memory(device)
    widest = max(DTYPE_BYTES[d] for d in dtypes)
    for s in shapes:
        need = counts[s] * widest
        if need > free:
            _fail(f"shape '{s}' needs {need / 1e9:.1f} GB for its {human(counts[s])} "
                  f"{'float32' if widest == 4 else '16-bit'} weights but only {free / 1e9:.1f} GB of "
                  f"{'GPU' if device.startswith('cuda') else 'host'} memory is available "
                  "(use --max-params or fewer --shapes)")
    from editbench.benchmarks.counterfact import CounterFact

    cases = CounterFact(split="edit").load(a.cases)
    specs = [dict(shape=s, method_params=params[m], dtype=d, method=m, device=device, cases=a.cases,
                  batch_size=a.batch_size, param_count=counts[s]) for s in shapes for d in dtypes for m in names]
    return specs, skipped, cases


def main(argv: Sequence[str] | None = None) -> int:
    try:
        a = build_parser().parse_args(argv)
        if a.worker is not None:
            return worker_main(a.worker)
        specs, skipped, cases = plan(a)
    except UsageError as e:
        print(f"editbench: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except Exception as e:  # an EditbenchError from the harness (unknown method, device, hyperparameter)
        from editbench.errors import EditbenchError

        if not isinstance(e, EditbenchError):
            raise
        print(f"editbench: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    for s, why in skipped:
        print(f"skipping {s}: {why}", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        cases_file = os.path.join(tmp, "cases.pkl")
        with open(cases_file, "wb") as f:
            pickle.dump(cases, f)
        for i, spec in enumerate(specs, 1):
            t = time.perf_counter()
            row = measure({**spec, "cases_file": cases_file}, a.timeout)
            row.setdefault("params", spec["param_count"])
            row.pop("cases_file", None)
            rows.append(row)
            print(f"[{i}/{len(specs)}] {spec['shape']} {spec['dtype']} {spec['method']}: {row['status']} "
                  f"({time.perf_counter() - t:.1f} s)", file=sys.stderr, flush=True)
    fitted = slopes(rows)
    print(f"{len(rows)} measurements on {specs[0]['device']}, {a.cases} cases each, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print_report(rows, fitted)
    if a.json:
        try:
            Path(a.json).write_text(json.dumps({"rows": rows, "slopes": fitted, "skipped": skipped,
                                                "argv": list(argv if argv is not None else sys.argv[1:])},
                                               indent=1))
        except OSError as e:
            print(f"editbench: error: could not write {a.json}: {e.strerror or e}", file=sys.stderr)
            return 2
    failed = sum(r["status"] != "ok" for r in rows)
    if failed:
        print(f"{failed} of {len(rows)} measurements failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
