"""User-facing errors: the CLI prints these as one line and exits non-zero (no traceback)."""


class EditbenchError(Exception):
    """A problem with the user's input or environment that has a clear one-line explanation."""


class DataError(EditbenchError):
    """Missing or malformed benchmark data."""


class ConfigError(EditbenchError):
    """Unknown names, invalid hyperparameters or options."""


class UnsupportedArchitecture(EditbenchError):
    """The model's architecture has no adapter (or lacks a component the adapter needs)."""


class WriteError(EditbenchError):
    """A file could not be written (disk full, file too large, permissions, read-only file system)."""


_REASONS = {errno_name: text for errno_name, text in (
    ("ENOSPC", "no space left on the device (disk full)"),
    ("EDQUOT", "disk quota exceeded"),
    ("EFBIG", "file too large (a file-size limit, e.g. ulimit -f, or the file system's maximum)"),
    ("EACCES", "permission denied"),
    ("EPERM", "operation not permitted"),
    ("EROFS", "read-only file system"),
    ("ENOENT", "no such file or directory"),
    ("ENOTDIR", "a part of the path is not a directory"),
    ("EISDIR", "it is a directory"),
)}


def os_reason(e: OSError) -> str:
    """An OSError's cause in words (errno name first), without the path."""
    import errno

    name = errno.errorcode.get(e.errno or -1, "")
    return _REASONS.get(name) or (e.strerror or str(e) or type(e).__name__).lower()


def io_error(e: OSError, path=None, action: str = "write") -> EditbenchError:
    """One line naming the file and the cause of an I/O failure."""
    where = path if path is not None else (e.filename or "a file (not named by the system)")
    return WriteError(f"could not {action} {where}: {os_reason(e)}")


class writing:
    """``with writing(path):`` turns an OSError inside into one :class:`WriteError` line naming ``path``."""

    def __init__(self, path, action: str = "write"):
        self.path, self.action = path, action

    def __enter__(self):
        return self

    def __exit__(self, typ, e, tb):
        if isinstance(e, OSError) and not isinstance(e, (BrokenPipeError, InterruptedError, TimeoutError)):
            raise io_error(e, self.path, self.action) from None
        return False
