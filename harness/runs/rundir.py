"""A result directory (run, sweep or attribution study) as its single writer sees it.

* One writer at a time: :meth:`ResultDir.writing` takes an exclusive lock (``.lock``, via
  ``filelock``) for the whole invocation; a second writer gets one line and exit 2, or waits.
  Readers (report, compare, curves) never need the lock: every file is appended line by line or
  replaced atomically.
* ``config.json`` holds the resolved configuration and the provenance of the inputs (data file
  hashes, model weights hash). A resume refuses any difference in a result-affecting key and names
  it. A directory that holds no results yet is not "taken": a corrected rerun replaces its config.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from editbench.errors import ConfigError, EditbenchError, writing
from editbench import results

LOCK_NAME = ".lock"


class DirectoryBusy(EditbenchError):
    """Another process is writing to the directory."""


class ResultDir:
    def __init__(self, path: str | os.PathLike, result_files: Sequence[str] = ("cases.jsonl",)):
        """``result_files``: the files whose presence means the directory holds results (a config
        alone does not)."""
        self.path = Path(path)
        self.result_files = tuple(result_files)
        self.config_path = self.path / "config.json"
        self.summary_path = self.path / "summary.json"

    # -- locking ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self, wait: bool = False) -> Iterator["ResultDir"]:
        """Hold the directory's exclusive writer lock (create the directory if needed)."""
        from filelock import FileLock, Timeout

        if self.path.exists() and not self.path.is_dir():
            raise EditbenchError(f"{self.path} exists and is not a directory")
        with writing(self.path, "create"):
            self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path / LOCK_NAME))
        try:
            with writing(self.path / LOCK_NAME, "create the lock file"):
                lock.acquire(timeout=-1 if wait else 0)
        except Timeout:
            raise DirectoryBusy(f"{self.path} is being written by another editbench process; wait for it "
                                "(or pass --wait) or use another --out") from None
        try:
            self._clean_temporaries()
            yield self
        finally:
            lock.release()

    def _clean_temporaries(self) -> None:
        """Temporary files of an interrupted atomic write (never results) are removed at start."""
        for p in self.path.glob("*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()

    # -- config ---------------------------------------------------------------------------------
    def has_results(self) -> bool:
        """A results file holding at least one complete line (a crash before the first record can
        leave an empty file or a torn line, which must not block a corrected rerun)."""
        for f in self.result_files:
            p = self.path / f
            if (self.path / (f + ".gz")).exists():
                return True
            if p.exists():
                with open(p, "rb") as fh:
                    if any(b"\n" in block for block in iter(lambda: fh.read(1 << 16), b"")):
                        return True
        return False

    def check_or_write_config(self, resolved: Mapping[str, Any], keys: Sequence[str],
                              provenance_keys: Sequence[str] = ()) -> None:
        """Write ``resolved`` as config.json, or (resume) refuse when a result-affecting key or an
        input's provenance differs from the one the existing results were computed with."""
        old = results.read_config(self.path)
        if old is not None and self.has_results():
            diff = [k for k in keys if old.get(k) != resolved.get(k)]
            if diff:
                details = "; ".join(f"{k}: {_short(old.get(k))} -> {_short(resolved.get(k))}" for k in diff[:3])
                raise ConfigError(f"{self.path} holds results of a different {', '.join(diff)} ({details}); "
                                  "use another --out")
            for k in provenance_keys:
                if k in old and old.get(k) != resolved.get(k):
                    raise ConfigError(f"{self.path}: {_changed(k, old.get(k), resolved.get(k))} since its results "
                                      "were computed; refusing to mix them (use another --out)")
        self.path.mkdir(parents=True, exist_ok=True)
        results.write_json(self.config_path, dict(resolved))

    # -- records ---------------------------------------------------------------------------------
    def check_records(self, name: str, required: Iterable[str] | Mapping = ()) -> None:
        """Validate ``name`` read-only (a resume refuses a malformed file before writing anything)."""
        results.read_jsonl(self.path / name, required=required)

    def file(self, name: str) -> Path:
        return self.path / name

    def load_records(self, name: str, required: Iterable[str] = ()) -> list[dict]:
        """Records of ``name`` for the writer (repairs a torn last line, expands a committed .gz)."""
        return results.repair_jsonl(self.path / name, required=required)

    def append(self, name: str, records: Iterable[Mapping]) -> None:
        results.append_jsonl(self.path / name, records)

    def rewrite(self, name: str, records: Iterable[Mapping]) -> None:
        results.rewrite_jsonl(self.path / name, records)

    # -- summary ---------------------------------------------------------------------------------
    def previous_summary(self) -> dict | None:
        """The summary an earlier invocation wrote (None if absent or unreadable: it is rewritten)."""
        try:
            data = results.read_json(self.summary_path)
        except EditbenchError:
            return None
        return data if isinstance(data, dict) else None

    def write_summary(self, summary: Mapping[str, Any], kind: str) -> dict:
        stamped = results.stamp(dict(summary), kind)
        results.write_json(self.summary_path, stamped)
        return stamped


def _short(v: Any) -> str:
    text = results.dumps(v) if not isinstance(v, str) else v
    return text if len(text) <= 60 else text[:57] + "..."


def _changed(key: str, old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        names = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
        parts = [f"{n} {str(old.get(n))[:12]} -> {str(new.get(n))[:12]}" for n in names[:3]]
        return f"{key} changed ({'; '.join(parts)})"
    return f"{key} changed ({str(old)[:16]} -> {str(new)[:16]})"
