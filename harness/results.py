"""The result files: the one place that reads and writes them.

Formats (all UTF-8):
* JSON lines (``cases.jsonl``, ``points.jsonl``, ``items.jsonl``, ``records.jsonl``): one JSON object
  per line, strict JSON (non-finite floats are written as ``null``). A committed file may be gzipped
  (``NAME.jsonl.gz``); readers take whichever exists. Only the *writer* of a directory repairs a
  file (cuts a torn last line, expands ``.gz`` to append to it): :func:`repair_jsonl`. Readers
  (report, compare, curves) skip an unfinished last line and never modify anything.
* ``summary.json``: an object with ``kind`` (``run``, ``sweep``, ``attribution``) and
  ``format_version``; summaries written before these fields existed are recognised by shape here,
  and nowhere else. :func:`load_summary` returns a typed, validated summary.
* ``config.json``: the resolved configuration of a directory.

Every malformed file gives a :class:`~editbench.errors.DataError` whose one line names the file
and what is wrong.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

from editbench.errors import DataError, writing

FORMAT_VERSION = 1
KINDS = ("run", "sweep", "attribution")
Required = Union[Iterable[str], Mapping[str, Union[type, tuple]]]


# ---------------------------------------------------------------------------------------------
# JSON values
# ---------------------------------------------------------------------------------------------
def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (strict JSON has no NaN/Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def dumps(obj: Any, **kw: Any) -> str:
    return json.dumps(finite_or_none(obj), sort_keys=True, allow_nan=False, **kw)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _loads(text: str | bytes) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """A JSON file; one-line errors for a missing, unreadable, non-UTF-8 or invalid file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{what} {p} not found") from None
    except IsADirectoryError:
        raise DataError(f"{what} {p} is a directory") from None
    except OSError as e:
        raise DataError(f"cannot read {p}: {e.strerror or e}") from None
    try:
        return _loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{p} is not UTF-8 text") from None
    except (json.JSONDecodeError, ValueError) as e:
        raise DataError(f"{p} is not valid JSON ({e})") from None


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomic write (temporary file + rename): a reader sees the old or the new file, never half."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    with writing(p):
        try:
            tmp.write_text(dumps(obj, indent=2), encoding="utf-8")
            os.replace(tmp, p)
        except OSError:
            tmp.unlink(missing_ok=True)  # no half-written temporary left behind
            raise


def write_file(path: str | os.PathLike, data: str | bytes) -> None:
    """A text or binary file written whole (reports, figures, analyses); an I/O failure is one line
    naming the file."""
    p = Path(path)
    with writing(p):
        if isinstance(data, bytes):
            p.write_bytes(data)
        else:
            p.write_text(data, encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# JSON lines
# ---------------------------------------------------------------------------------------------
def _existing(path: Path) -> Path | None:
    if path.exists():
        return path
    gz = path.with_name(path.name + ".gz")
    return gz if gz.exists() else None


def _raw(path: Path) -> bytes:
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if path.suffix == ".gz" else data
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None


def _parse_lines(raw: bytes, path: Path, strict: bool, finished: bool = False) -> tuple[list[dict], int]:
    """Records and the byte length of the complete lines (a torn last line is not counted unless
    the file is ``finished``, e.g. a data file that simply lacks a final newline)."""
    records: list[dict] = []
    good_end = pos = 0
    for i, line in enumerate(raw.splitlines(keepends=True), 1):
        if not line.endswith(b"\n") and not finished:
            break
        pos += len(line)
        good_end = pos
        if not line.strip():
            continue
        try:
            rec = _loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
            if strict:
                why = "is not UTF-8" if isinstance(e, UnicodeDecodeError) else "is not valid JSON"
                raise DataError(f"{path}: line {i} {why}; fix or move the file") from None
            continue
        if not isinstance(rec, dict):
            if strict:
                raise DataError(f"{path}: line {i} is a JSON {type(rec).__name__}, not an object") from None
            continue
        records.append(rec)
    return records, good_end


def read_jsonl(path: str | os.PathLike, *, strict: bool = True, required: Required = (),
               finished: bool = False) -> list[dict]:
    """Records of ``path`` (or ``path.gz``), read-only; [] when neither exists. An unfinished last
    line is skipped (another process may be appending it) unless ``finished`` (input data files).
    ``strict``: a bad complete line raises; ``required``: keys (or {key: type(s)}) every record needs."""
    p = Path(path)
    src = _existing(p)
    if src is None:
        return []
    records, _ = _parse_lines(_raw(src), src, strict, finished)
    check_keys(records, required, src)
    return records


def check_keys(records: list[dict], required: Required, path: Path) -> None:
    """Every record has the required keys (and, for a mapping, values of the given types)."""
    types = dict(required) if isinstance(required, Mapping) else {k: object for k in required}
    for i, r in enumerate(records, 1):
        for k, typ in types.items():
            if k not in r:
                raise DataError(f"{path}: record {i} has no '{k}'; fix or move the file")
            v = r[k]
            if not isinstance(v, typ) or (isinstance(v, bool) and typ in ((int, float), (int, str), int, float)):
                raise DataError(f"{path}: record {i}: '{k}' has the wrong type ({type(v).__name__}); "
                                "fix or move the file")


def repair_jsonl(path: str | os.PathLike, *, required: Required = ()) -> list[dict]:
    """For the directory's single writer only: expand a committed ``.gz`` into the plain file
    (appends go there), cut a torn last line off, and return the records."""
    p = Path(path)
    src = _existing(p)
    if src is None:
        return []
    raw = _raw(src)
    records, good_end = _parse_lines(raw, src, strict=True)
    check_keys(records, required, src)
    if src != p:
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_bytes(raw[:good_end])
        os.replace(tmp, p)
        src.unlink()
    elif good_end < len(raw):
        with open(p, "r+b") as f:
            f.truncate(good_end)
    return records


def rewrite_jsonl(path: str | os.PathLike, records: Iterable[Mapping]) -> None:
    """Replace the file's records atomically (writer only: e.g. dropping orphans on resume)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    with writing(p):
        try:
            tmp.write_text("".join(dumps(r) + "\n" for r in records), encoding="utf-8")
            os.replace(tmp, p)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise


def append_jsonl(path: str | os.PathLike, records: Iterable[Mapping]) -> None:
    """Append records as strict JSON lines and fsync (one write call, so a kill tears at most the
    last line, which the writer's next :func:`repair_jsonl` cuts)."""
    text = "".join(dumps(r) + "\n" for r in records)
    if not text:
        return
    with writing(path), open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------
# Typed summaries
# ---------------------------------------------------------------------------------------------
def _kind_of(d: dict) -> str | None:
    """``kind`` field, or (summaries written before format_version 1) the shape."""
    kind = d.get("kind")
    if kind is not None:
        return kind if kind in KINDS else None
    cfg = d.get("config")
    if isinstance(d.get("points"), dict):
        return "run"
    if isinstance(cfg, dict) and isinstance(cfg.get("methods"), list) and isinstance(cfg.get("track"), dict):
        return "sweep"
    if isinstance(cfg, dict) and cfg.get("kind") == "attribution":
        return "attribution"
    return None


def _need(d: Mapping, key: str, typ: type | tuple, path: Path, optional: bool = False) -> Any:
    v = d.get(key)
    if v is None and optional:
        return v
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
        raise DataError(f"{path}: '{key}' must be a {names}, got {type(v).__name__}")
    return v


def _check_agg_map(m: Any, where: str, path: Path) -> None:
    if not isinstance(m, dict):
        raise DataError(f"{path}: {where} must be a mapping of metrics")
    for name, agg in m.items():
        if agg is None or isinstance(agg, (int, float)) and not isinstance(agg, bool):
            continue
        if not isinstance(agg, dict):
            raise DataError(f"{path}: {where}.{name} must be an aggregate mapping")
        n = agg.get("n")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int)):
            raise DataError(f"{path}: {where}.{name}.n must be an integer, got {n!r}")
        for k in ("mean", "std"):
            x = agg.get(k)
            if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float))):
                raise DataError(f"{path}: {where}.{name}.{k} must be a number, got {x!r}")
        ci = agg.get("ci95")
        if ci is not None and (not isinstance(ci, list) or len(ci) != 2
                               or any(c is not None and (isinstance(c, bool) or not isinstance(c, (int, float))) for c in ci)):
            raise DataError(f"{path}: {where}.{name}.ci95 must be a pair of numbers")


@dataclass
class Summary:
    """A validated summary.json; ``data`` is the whole mapping as written."""

    path: Path
    data: dict

    kind = ""

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def config(self) -> dict:
        return self.data.get("config") or {}

    @property
    def versions(self) -> dict:
        return self.data.get("versions") or {}

    def validate(self) -> None:
        p, d = self.path, self.data
        _need(d, "config", dict, p)
        for key in ("versions", "model", "data"):
            _need(d, key, dict, p, optional=True)


class RunSummary(Summary):
    kind = "run"

    def validate(self) -> None:
        super().validate()
        p, d = self.path, self.data
        _need(d["config"], "method_params", dict, p, optional=True)
        if not isinstance((d.get("data") or {}).get("files", {}), dict):
            raise DataError(f"{p}: 'data.files' must be a mapping of file hashes")
        _need(d, "n_cases", int, p, optional=True)
        rc = _need(d, "record_code", list, p, optional=True)
        if rc is not None and not all(isinstance(x, dict) for x in rc):
            raise DataError(f"{p}: 'record_code' must be a list of mappings")
        _check_agg_map(_need(d, "pre", dict, p, optional=True) or {}, "pre", p)
        points = _need(d, "points", dict, p)
        if not points:
            raise DataError(f"{p}: 'points' is empty")
        for key, point in points.items():
            try:
                float(key)
            except ValueError:
                raise DataError(f"{p}: point key {key!r} is not a strength") from None
            if not isinstance(point, dict) or not isinstance(point.get("post"), dict):
                raise DataError(f"{p}: point {key!r} has no 'post' metrics")
            _check_agg_map(point["post"], f"points.{key}.post", p)

    @property
    def points(self) -> dict:
        return self.data["points"]


class SweepSummary(Summary):
    kind = "sweep"

    def validate(self) -> None:
        super().validate()
        p, cfg = self.path, self.data["config"]
        _need(cfg, "methods", list, p)
        _need(cfg, "track", dict, p)
        _need(self.data, "analysis", dict, p, optional=True)

    @property
    def track(self) -> dict:
        return self.config.get("track") or {}

    @property
    def analysis(self) -> dict:
        return self.data.get("analysis") or {}

    def points(self) -> list[dict]:
        """The per-point lines of ``points.jsonl``, validated (strict: a sweep's points are its result)."""
        pp = self.directory / "points.jsonl"
        if _existing(pp) is None:
            raise DataError(f"sweep {self.directory} has no points.jsonl")
        points = read_jsonl(pp)
        for i, q in enumerate(points, 1):
            s = q.get("strength")
            if not (isinstance(q.get("method"), str) and isinstance(q.get("params"), dict)
                    and isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s)
                    and q.get("split") in ("val", "test")):
                raise DataError(f"{pp}: line {i} is not a sweep point (needs method, params, strength, split val/test)")
            for name in ("attribute", "utility"):
                if name in q:
                    _check_agg_map({name: q[name]}, f"line {i}", pp)
        if not points:
            raise DataError(f"{pp} holds no points")
        return points


class StudySummary(Summary):
    kind = "attribution"


_TYPES: dict[str, type[Summary]] = {"run": RunSummary, "sweep": SweepSummary, "attribution": StudySummary}


def stamp(summary: dict, kind: str) -> dict:
    """``summary`` with its ``kind`` and ``format_version`` (every writer calls this)."""
    assert kind in KINDS, kind
    return {**summary, "kind": kind, "format_version": FORMAT_VERSION}


def load_summary(directory: str | os.PathLike, expect: str | Iterable[str] | None = None) -> Summary:
    """The typed summary of a run, sweep or study directory; ``expect`` restricts the kinds."""
    d = Path(directory)
    what = expect if isinstance(expect, str) else "results"
    if not d.exists():
        raise DataError(f"{what} directory {d} does not exist")
    if not d.is_dir():
        raise DataError(f"{d} is not a directory")
    sp = d / "summary.json"
    if not sp.is_file():
        hint = " (still in progress or interrupted?)" if (d / "config.json").is_file() else ""
        raise DataError(f"{d} has no summary.json{hint}")
    data = read_json(sp, "summary")
    wanted = (expect,) if isinstance(expect, str) else tuple(expect or KINDS)
    label = " or ".join(wanted) if expect else "run, sweep or attribution"
    if not isinstance(data, dict):
        raise DataError(f"{sp} is not an editbench {label} summary (it is a JSON {type(data).__name__})")
    fv = data.get("format_version", 0)
    if isinstance(fv, bool) or not isinstance(fv, int) or fv > FORMAT_VERSION:
        raise DataError(f"{sp}: unsupported format_version {fv!r} (this editbench reads up to {FORMAT_VERSION})")
    kind = _kind_of(data)
    if kind is None:
        raise DataError(f"{sp} is not an editbench {label} summary: neither a run summary (no per-strength "
                        "points) nor a sweep or attribution summary")
    if kind not in wanted:
        raise DataError(f"{sp} is not an editbench {label} summary (it is a {kind} summary)")
    s = _TYPES[kind](sp, data)
    s.validate()
    return s


def read_config(directory: str | os.PathLike) -> dict | None:
    """A directory's ``config.json`` (None when absent), which must be a mapping."""
    p = Path(directory) / "config.json"
    if not p.exists():
        return None
    data = read_json(p, "config")
    if not isinstance(data, dict):
        raise DataError(f"{p} is a JSON {type(data).__name__}, not a configuration mapping; use another --out")
    return data
