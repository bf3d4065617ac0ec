"""Benchmark data through Hugging Face ``datasets``: local files of the data root and hub datasets.

One entry point, :func:`load_records`, so every benchmark reads its data the same way:

* a local file (a path relative to the data root, or absolute) goes through the packaged builders,
  ``load_dataset("json" | "csv" | "text", data_files=...)``: ``.json`` (an array), ``.jsonl``,
  ``.csv`` and plain text (``.txt``/``.raw``, one record per line or the whole file);
* a hub dataset, written ``hub:OWNER/NAME[@REVISION][?name=CONFIG&split=SPLIT]`` (or the mapping
  ``{hub: OWNER/NAME, name:, split:, revision:}`` in a YAML config), goes through
  ``load_dataset_builder(OWNER/NAME, CONFIG, revision=...)``, pinned to the commit it resolved to.

Records come back as plain Python rows (a :class:`Records` list that also says where they came
from). What ``datasets`` does to data, and what this module does about it, so that records equal a
plain ``json``/``csv`` read of the same file (tested on the whole data bundle):

* Rows of one file share one schema, so a key absent from a row is filled with ``None``: every
  ``None``-valued key is dropped again (a JSON ``null`` therefore counts as absent), so "missing
  field" checks still fire.
* A field with values of different JSON types is stored JSON-encoded, and a string that is itself
  valid JSON (``"5"``) would come back as a number: such a field is refused with one line, unless
  all its values are objects or arrays (e.g. TruthfulQA's ``{answer: label}`` maps, whose key order
  is kept exactly).
* In a number column holding any non-integer, integers are read as floats.
* CSV cells are read as strings (no type inference, no ``NA``/``None`` to null), a row's missing
  trailing cells as ``""`` (``csv.DictReader`` gives ``None``; both are empty to the benchmarks).
* A ``.json`` file must hold an array (``datasets`` reads a lone object as one row).

Local files are loaded with ``keep_in_memory=True`` into a throwaway Arrow cache that is removed
right after: a warm cache saved nothing measurable (0.20 s vs 0.22-0.30 s for the 10,000-record
CounterFact file; ``datasets``' own fixed cost dominates), and nothing is left behind for test
fixtures, read-only data roots or edited files (no stale cache keyed by modification time). Hub
datasets use the ordinary ``datasets`` cache (``$HF_DATASETS_CACHE``), where downloads belong.

Offline: before anything is downloaded, one metadata request (``HfApi.dataset_info``, timeout
:data:`HUB_TIMEOUT`) resolves the revision, so an unreachable hub fails within seconds with one
line instead of ``datasets``' retries (about 23 s, measured here). With ``HF_HUB_OFFLINE=1`` (or
``HF_DATASETS_OFFLINE=1``) that request is skipped and a copy cached earlier is used if there is one.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import parse_qsl

from editbench.data import resolve_data_root, sha256_file
from editbench.errors import ConfigError, DataError, WriteError, os_reason

HUB_PREFIX = "hub:"
#: seconds the metadata request may take before the hub counts as unreachable
HUB_TIMEOUT = 10.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
_HUB_KEYS = ("name", "split", "revision")
#: file suffix -> the ``datasets`` packaged builder that reads it
_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".txt": "text", ".raw": "text"}


# ---------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HubSource:
    """A dataset on the Hugging Face hub: repository id, config name, split and revision."""

    id: str
    name: str | None = None
    split: str | None = None
    revision: str | None = None

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any]) -> "HubSource":
        """``"hub:OWNER/NAME[@REVISION][?name=C&split=S]"`` or ``{"hub": ID, "name", "split", "revision"}``."""
        if isinstance(spec, Mapping):
            unknown = sorted(set(spec) - {"hub", *_HUB_KEYS})
            if unknown or not isinstance(spec.get("hub"), str):
                raise ConfigError(f"a hub dataset mapping needs 'hub: OWNER/NAME' and may have {', '.join(_HUB_KEYS)}; "
                                  f"got {dict(spec)!r}")
            fields = {k: spec.get(k) for k in _HUB_KEYS}
            bad = [k for k, v in fields.items() if v is not None and (not isinstance(v, str) or not v.strip())]
            if bad:
                raise ConfigError(f"hub dataset {spec['hub']!r}: '{bad[0]}' must be a non-empty string")
            return cls._checked(spec["hub"], **fields)
        if not isinstance(spec, str) or not spec.startswith(HUB_PREFIX):
            raise ConfigError(f"not a hub dataset: {spec!r} (expected '{HUB_PREFIX}OWNER/NAME[@REVISION]"
                              "[?name=CONFIG&split=SPLIT]')")
        body, _, query = spec[len(HUB_PREFIX):].partition("?")
        repo, _, revision = body.partition("@")
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError:
            raise ConfigError(f"hub dataset {spec!r}: the part after '?' must be name=CONFIG&split=SPLIT") from None
        opts: dict[str, str] = {}
        for k, v in pairs:
            if k not in ("name", "split") or k in opts or not v:
                raise ConfigError(f"hub dataset {spec!r}: after '?' only name=CONFIG and split=SPLIT (each once, "
                                  f"non-empty) are allowed, got {k!r}")
            opts[k] = v
        if "@" in spec[len(HUB_PREFIX):].partition("?")[0] and not revision:
            raise ConfigError(f"hub dataset {spec!r}: empty revision after '@'")
        return cls._checked(repo, revision=revision or None, **opts)

    @classmethod
    def _checked(cls, repo: str, **fields: str | None) -> "HubSource":
        if not _HUB_ID.match(repo or ""):
            raise ConfigError(f"hub dataset id {repo!r} is not of the form OWNER/NAME (or NAME)")
        return cls(repo, **fields)

    def with_defaults(self, **defaults: str | None) -> "HubSource":
        """This source with ``name``/``split``/``revision`` filled in where it leaves them open."""
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    def __str__(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in (("name", self.name), ("split", self.split)) if v)
        return f"{HUB_PREFIX}{self.id}" + (f"@{self.revision}" if self.revision else "") + (f"?{query}" if query else "")


def is_hub(spec: Any) -> bool:
    return isinstance(spec, Mapping) or (isinstance(spec, str) and spec.startswith(HUB_PREFIX))


class Records(list):
    """Rows of one source, plus where they came from: ``origin`` (the file path, or the hub source
    pinned to its commit) and ``fingerprint`` (the file's sha256, or the hub commit) for provenance."""

    def __init__(self, rows: list[dict], origin: str, *, path: Path | None = None, commit: str | None = None,
                 info: dict | None = None):
        super().__init__(rows)
        self.origin, self.path, self.commit = origin, path, commit
        self.info = info or {}

    @property
    def fingerprint(self) -> str:
        return sha256_file(self.path) if self.path is not None else (self.commit or "unknown")

    def provenance(self) -> dict[str, str]:
        """``{origin: fingerprint}``, the shape of a benchmark's ``provenance()["files"]``."""
        return {self.origin: self.fingerprint}


# ---------------------------------------------------------------------------------------------
# the one entry point
# ---------------------------------------------------------------------------------------------
def load_records(source: str | os.PathLike | Mapping[str, Any] | HubSource, *, data_root: str | os.PathLike | None = None,
                 split: str | None = None, name: str | None = None, fmt: str | None = None,
                 by: str = "line") -> Records:
    """Rows of ``source``: a hub dataset (``split``/``name`` fill what the source leaves open) or a
    local file, relative to the data root unless absolute. ``fmt`` overrides the builder chosen by
    the suffix (``json``, ``csv``, ``text``); ``by`` is the text sampling (``line`` or ``document``)."""
    if isinstance(source, HubSource) or is_hub(source):
        src = source if isinstance(source, HubSource) else HubSource.parse(source)
        return load_hub(src.with_defaults(split=split, name=name))
    path = Path(source)
    if not path.is_absolute():
        path = resolve_data_root(data_root) / path
    return load_local(path, fmt, by=by)


# ---------------------------------------------------------------------------------------------
# local files
# ---------------------------------------------------------------------------------------------
def load_local(path: str | os.PathLike, fmt: str | None = None, *, by: str = "line") -> Records:
    """A local data file through ``load_dataset(builder, data_files=...)`` (see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} not found")
    builder = fmt or _FORMATS.get(path.suffix.lower())
    if builder not in ("json", "csv", "text"):
        raise DataError(f"{path}: unknown data format (suffixes: {', '.join(_FORMATS)})")
    kwargs: dict[str, Any] = {}
    if builder == "json" and path.suffix.lower() == ".json":
        _check_array_start(path)
    elif builder == "csv":
        kwargs = _csv_kwargs(path)
        if kwargs is None:
            return Records([], str(path), path=path)
    elif builder == "text":
        if by not in ("line", "document"):
            raise ValueError(f"text sampling must be 'line' or 'document', got {by!r}")
        kwargs = {"sample_by": by}
    key = _file_key(path, builder, by)
    ds = _LOADED.get(key)
    if ds is None:
        ds = _load_file(path, builder, kwargs)
        if ds is None:  # an empty file: zero records
            return Records([], str(path), path=path)
        _LOADED[key] = ds
        while len(_LOADED) > _LOADED_MAX:
            _LOADED.pop(next(iter(_LOADED)))
    rows = ds.to_list()  # fresh Python objects on every call: callers may keep or change them
    _refuse_json_encoded_scalars(ds.features, rows, str(path))
    if _has_nulls(ds.data.table):
        rows = [_drop_none(r) for r in rows]
    return Records(rows, str(path), path=path)


#: loaded files (in-memory Arrow tables) by path, size, modification time and inode: a file read
#: twice in one process (a CounterFact split is also read by the subject index) is parsed once
_LOADED: dict[tuple, Any] = {}
_LOADED_MAX = 32


def _file_key(path: Path, builder: str, by: str) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, builder, by)


def _load_file(path: Path, builder: str, kwargs: dict) -> Any:
    """The file as an in-memory ``datasets.Dataset`` (its throwaway Arrow cache removed), or None
    when it holds no records."""
    import datasets

    with _quiet(), tempfile.TemporaryDirectory(prefix="editbench-datasets-") as cache:
        try:
            return datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache,
                                         keep_in_memory=True, **kwargs)
        except Exception as e:  # noqa: BLE001 - datasets raises many types; the diagnosis names the problem
            io = _write_failure(e)
            if io is not None:  # the cache could not be written: nothing is known about the data file
                raise WriteError(f"datasets could not write its temporary Arrow cache under {cache} while reading "
                                 f"{path}: {os_reason(io)} (the data file itself was not judged)") from None
            if _is_empty(path, builder):
                return None
            raise DataError(_diagnose(path, builder, e)) from None


def _write_failure(e: BaseException) -> OSError | None:
    """The OSError of a failed write (disk full, file too large, read-only, permission) anywhere in
    an exception's cause / context chain, or None."""
    import errno

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES):
            return e
        e = e.__cause__ or e.__context__
    return None


def _has_nulls(table: Any) -> bool:
    """Whether any value at any depth is null (only then can a row hold a key ``datasets`` filled)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def walk(arr: Any) -> bool:
        if arr.null_count:
            return True
        t = arr.type
        if pa.types.is_struct(t):
            return any(walk(arr.field(i)) for i in range(t.num_fields))
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return walk(pc.list_flatten(arr))
        return False

    return any(walk(chunk) for col in table.columns for chunk in col.chunks)


def jsonl_line(path: str | os.PathLike, index: int) -> int:
    """The 1-based line number of the ``index``-th record of a JSON-lines file (blank lines hold no
    record), for error lines that name the line as the file shows it."""
    seen = -1
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                seen += 1
                if seen == index:
                    return number
    return index + 1


def _check_array_start(path: Path) -> None:
    """A ``.json`` data file holds an array: ``datasets`` would read a lone object as one row."""
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
        while not head:
            chunk = f.read(1 << 16)
            if not chunk:
                break
            head = chunk.lstrip()
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:].lstrip()
    if not head.startswith(b"["):
        _stdlib_json(path)  # raises "not valid JSON (...)" for a broken file
        kind = "object" if head.startswith(b"{") else "value"
        raise DataError(f"{path}: expected a non-empty JSON array of records, got a JSON {kind}")


def _csv_kwargs(path: Path) -> dict | None:
    """Every column as strings (no type inference, no ``NA`` -> null); None for a file without a header."""
    from datasets import Features, Value

    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), None)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable UTF-8 CSV file ({e})") from None
    if not header:
        return None
    if len(set(header)) != len(header):
        raise DataError(f"{path}: CSV header has a repeated column name ({', '.join(header)})")
    return {"features": Features({c: Value("string") for c in header}), "na_filter": False,
            "keep_default_na": False, "index_col": False}


def _is_empty(path: Path, builder: str) -> bool:
    """``datasets`` cannot build a split from no rows; an empty file (or ``[]``) is zero records."""
    text = path.read_bytes().strip()
    if builder == "json" and path.suffix.lower() == ".json":
        try:
            return json.loads(text) == []
        except (ValueError, UnicodeDecodeError):
            return False
    if builder == "csv":  # a header and no rows
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            return sum(1 for row in csv.reader(f) if row) <= 1
    return not text


def _diagnose(path: Path, builder: str, err: Exception) -> str:
    """One line for a file ``datasets`` refused: the stdlib parsers name the line or position when
    the file itself is malformed (the same messages as before ``datasets``), else ``datasets``' reason."""
    from editbench import results

    if builder == "json":
        if path.suffix.lower() == ".json":
            data = _stdlib_json(path)
            kind = dict if data and isinstance(data[0], dict) else str  # records, or a list of strings
            bad = next((i for i, r in enumerate(data) if not isinstance(r, kind)), None)
            if bad is not None:
                return f"{path} record {bad}: expected {'an object' if kind is dict else 'a string'}"
        else:
            results.read_jsonl(path, finished=True)  # raises "line N is not valid JSON" / "is a JSON list"
    return f"{path}: could not be read as {builder} by datasets ({_first_line(err)})"


def _stdlib_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def _first_line(err: BaseException) -> str:
    """The innermost cause's first line (``DatasetGenerationError`` wraps the parser's error)."""
    *_, err = _chain(err)
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _drop_none(row: Any) -> Any:
    """Drop ``None``-valued keys of (nested) objects: ``datasets`` fills keys a row lacks with None."""
    if isinstance(row, dict):
        return {k: _drop_none(v) for k, v in row.items() if v is not None}
    if isinstance(row, list):
        return [_drop_none(v) for v in row]
    return row


def _refuse_json_encoded_scalars(features: Any, rows: list[dict], origin: str) -> None:
    """``datasets`` JSON-encodes a field of mixed types; decoding turns a string such as ``"5"`` back
    into a number, so a value's type would no longer be the file's. Objects and arrays survive
    exactly (their encoding is unambiguous): only scalars in such a field are refused."""
    try:
        from datasets.utils.json import get_json_field_paths_from_feature
    except ImportError:  # older datasets: no JSON encoding, mixed types already fail to load
        return
    for field_path in get_json_field_paths_from_feature(features):
        for i, row in enumerate(rows):
            for value in _at(row, field_path):
                if value is not None and not isinstance(value, (dict, list)):
                    shown = ".".join("[]" if p == 0 else str(p) for p in field_path)
                    raise DataError(f"{origin} record {i}: field '{shown}' holds values of different types "
                                    f"across records ({type(value).__name__} here); give it one type in every record")


def _at(value: Any, field_path: list) -> Iterator[Any]:
    if not field_path:
        yield value
        return
    head, rest = field_path[0], field_path[1:]
    if head == 0 and isinstance(value, list):
        for v in value:
            yield from _at(v, rest)
    elif isinstance(value, dict):
        yield from _at(value.get(head), rest)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars and no log lines from ``datasets`` (the run's own progress bar is the one
    that matters): a failure becomes one :class:`DataError` line, a success prints nothing. The
    previous settings are restored."""
    import pandas as pd
    from datasets.utils import logging as dlog
    from datasets.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    bars_off, level = are_progress_bars_disabled(), dlog.get_verbosity()
    disable_progress_bars()
    dlog.set_verbosity(dlog.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)  # a CSV row longer than its header
            yield
    finally:
        dlog.set_verbosity(level)
        if not bars_off:
            enable_progress_bars()


# ---------------------------------------------------------------------------------------------
# hub datasets
# ---------------------------------------------------------------------------------------------
def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``, as ``datasets`` read them at import."""
    import datasets.config

    return bool(datasets.config.HF_HUB_OFFLINE)


def load_hub(src: HubSource) -> Records:
    """``src``'s split as rows, pinned to one commit (the metadata request resolves ``revision``;
    offline, the cached copy's commit). ``split`` defaults to ``train``."""
    import datasets

    src = src.with_defaults(split="train")
    commit = src.revision
    if not hub_offline():
        from huggingface_hub import HfApi

        try:
            commit = HfApi().dataset_info(src.id, revision=src.revision, timeout=HUB_TIMEOUT).sha
        except Exception as e:  # noqa: BLE001 - connection, not found, gated: one line each
            raise DataError(_hub_error(src, e)) from None
    try:
        with _quiet():
            builder = datasets.load_dataset_builder(src.id, src.name, revision=commit)
            builder.download_and_prepare()
            available = list(builder.info.splits or {})
            if available and src.split not in available:
                raise DataError(f"hub dataset '{src}' has no split '{src.split}' (splits: {', '.join(available)}); "
                                "add ?split=NAME")
            ds = builder.as_dataset(split=src.split)
            rows = ds.to_list()
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(_hub_error(src, e)) from None
    commit = builder.hash or commit
    pinned = replace(src, revision=commit) if commit else src
    _refuse_json_encoded_scalars(ds.features, rows, str(pinned))
    info = {"id": src.id, "name": builder.config.name, "split": src.split, "revision": src.revision,
            "commit": commit, "num_rows": len(rows)}
    return Records([_drop_none(r) for r in rows], str(pinned), commit=commit, info=info)


def _hub_error(src: HubSource, err: BaseException) -> str:
    names = {type(e).__name__ for e in _chain(err)}
    if type(err).__name__ == "DatasetGenerationError":  # a wrapper: the parser's own error says what is wrong
        reason = _first_line(err)
    else:  # the outermost error says what failed in the user's terms
        text = str(err).strip()
        reason = f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__
    if names & {"RepositoryNotFoundError", "DatasetNotFoundError", "GatedRepoError", "RevisionNotFoundError"}:
        return f"could not load dataset '{src}' from the Hugging Face hub: {reason} (private or gated: log in with `hf auth login`)"
    if names & {"ConnectError", "ConnectTimeout", "TimeoutException", "ReadTimeout", "ConnectionError",
                "OfflineModeIsEnabled", "LocalEntryNotFoundError", "NetworkError"}:
        hint = ("HF_HUB_OFFLINE is set and no copy is cached" if hub_offline()
                else "with HF_HUB_OFFLINE=1 a copy cached earlier is used")
        return f"could not load dataset '{src}' from the Hugging Face hub (offline?): {reason}; {hint}"
    return f"could not load dataset '{src}' from the Hugging Face hub: {reason}"


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__
