"""Where the work of a run or a sweep is computed: in this process (serial, the default) or on Ray actors.

Runs and sweeps plan their work as items in the serial order (a run: its chunks of cases; a sweep:
its (point, split) pairs) and hand them to an :class:`Executor` together with a picklable
:class:`Work` (what a worker builds once: model, method, evaluator, track). The executor yields the
results in the items' order; the driver, the process that holds the directory's writer lock, stamps
and appends them. So the driver stays the single writer, resume and provenance are the serial
path's, and a Ray run's records are the serial run's: every item is computed by the same code on
a model loaded with the same seed, and the evaluator seeds per case.

``ray`` is imported only when ``--backend ray`` is chosen (it is an optional extra,
``pip install 'editbench[distributed]'``). The driver hands items to free actors (``ray.wait``);
each actor loads the model once and keeps it for every item and every run of one invocation. A worker
whose process dies is restarted by Ray and its item run again (up to :data:`WORKER_RETRIES` times;
the restarted actor loads the model again), so a lost node does not stop a long sweep and the records
still equal a serial run's; an item that kills its worker every time ends the run with one line naming it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol

from editbench.errors import ConfigError, DataError, EditbenchError

if TYPE_CHECKING:
    from editbench.modeling.loading import LoadedModel

BACKENDS = ("serial", "ray")
#: how often a dead worker is restarted and its item retried before the run stops on that item
WORKER_RETRIES = 3
INSTALL_HINT = "pip install 'editbench[distributed]' (or rerun scripts/setup.sh)"
#: environment variables that decide what a worker reads (data root, model cache, hub settings);
#: the driver's values are passed to every actor, so workers see the same data and cache
WORKER_ENV_PREFIXES = ("EDITBENCH_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "XDG_CACHE_HOME")


@dataclass(frozen=True)
class ModelSpec:
    """What a worker loads; equal specs share the model an actor already holds."""

    model: str
    device: str
    dtype: str
    seed: int

    def load(self) -> "LoadedModel":
        from editbench.modeling.loading import load_model

        return load_model(self.model, device=self.device, dtype=self.dtype, seed=self.seed)

    @classmethod
    def of(cls, cfg: Any) -> "ModelSpec":
        """The model of a run or sweep config (both carry CommonConfig's model, device, dtype, seed)."""
        return cls(cfg.model, cfg.device, cfg.dtype, cfg.seed)


class Bound(Protocol):
    """A work bound to a loaded model: called once per item."""

    lm: "LoadedModel"

    def __call__(self, item: Any) -> Any: ...


class Work(Protocol):
    """A picklable description of work: a worker binds it to its model once, then calls the
    result on many items."""

    model: ModelSpec

    def bind(self, lm: "LoadedModel") -> Bound: ...


@dataclass
class BackendOptions:
    """``--backend``, ``--address``, ``--workers``, ``--gpus-per-worker`` of ``run`` and ``sweep``."""

    backend: str = "serial"
    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise ConfigError(f"--workers must be an integer >= 1, got {self.workers!r}")
        g = self.gpus_per_worker
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0:
            raise ConfigError(f"--gpus-per-worker must be a finite number >= 0, got {g!r}")
        if self.address is not None and not str(self.address).strip():
            raise ConfigError("--address must not be empty (leave it out for $RAY_ADDRESS or a local instance)")
        if self.backend == "serial":
            given = [flag for flag, v in (("--address", self.address), ("--workers", self.workers),
                                          ("--gpus-per-worker", self.gpus_per_worker or None)) if v is not None]
            if given:
                raise ConfigError(f"{', '.join(given)}: only used with --backend ray")


class Executor:
    """Serial execution in the driver's process (the default): the driver's own model computes."""

    backend = "serial"

    def driver_device(self, device: str) -> str:
        """Where the driver loads its model (for provenance, validation and, serially, the compute)."""
        return device

    def check_device(self, device: str) -> None:
        """Refuse a device the workers cannot use (nothing to refuse in-process)."""

    def map(self, work: Work, items: Iterable[Any], local: Bound) -> Iterator[Any]:
        """Results of ``items`` in their order; ``local`` is ``work`` bound to the driver's model."""
        for item in items:
            yield local(item)

    def model_provenance(self, work: Work, lm: "LoadedModel") -> dict:
        """The model provenance a summary records: the model that computed ``work``."""
        return lm.provenance()

    def close(self) -> None:
        pass

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_executor(options: BackendOptions | None = None) -> Executor:
    """The executor for ``options`` (checked; Ray connects only when there is work to send)."""
    options = options or BackendOptions()
    options.validate()
    if options.backend == "serial":
        return Executor()
    return RayExecutor(options)


# ---------------------------------------------------------------------------------------------
class _Worker:
    """The body of one Ray actor: loads a model once (kept while the spec stays the same), binds a
    work to it, computes items. Runs in the driver's working directory when that exists on the
    worker's node, so relative paths in configs mean the same."""

    def __init__(self, cwd: str):
        if os.path.isdir(cwd):
            os.chdir(cwd)
        self._spec: ModelSpec | None = None
        self._lm = None
        self._fn: Bound | None = None
        self._loads = 0

    def setup(self, work: Work) -> dict:
        from editbench.runs.provenance import source_sha256

        if self._spec != work.model:
            self._lm = self._fn = None  # free the old model before loading another
            self._lm = work.model.load()
            self._spec = work.model
            self._loads += 1
        self._fn = work.bind(self._lm)
        return {"host": socket.gethostname(), "pid": os.getpid(), "device": str(self._lm.device),
                "model_loads": self._loads, "weights_sha256": self._lm.weights_hash, "source_sha256": source_sha256()}

    def run(self, index: int, item: Any, work: Work | None = None) -> tuple[int, Any, Exception | None]:
        """``(index, result, None)``, or ``(index, None, error)`` for a one-line error: the driver raises
        it when the item's turn comes, after writing every earlier result, as a serial run would.
        ``work``: an actor that Ray restarted after its process died has lost its model; it sets
        itself up again from this before computing the retried item."""
        if self._fn is None and work is not None:
            self.setup(work)
        assert self._fn is not None, "setup() first"
        try:
            return index, self._fn(item), None
        except (EditbenchError, OSError) as e:
            return index, None, e


def worker_env() -> dict[str, str]:
    """The driver's editbench / hub environment, with the data root resolved as the driver sees it."""
    from editbench.data import ENV_VAR, resolve_data_root

    env = {k: v for k, v in os.environ.items() if k.startswith(WORKER_ENV_PREFIXES)}
    try:
        env[ENV_VAR] = str(resolve_data_root(None))
    except DataError:  # no default root here: configs must name one (the driver reports it otherwise)
        pass
    return env


class RayExecutor(Executor):
    """Items computed on Ray actors (restarted when they die), results returned in the items' order."""

    backend = "ray"

    def __init__(self, options: BackendOptions):
        try:
            import ray
        except ImportError:
            raise ConfigError(f"--backend ray needs the ray package: {INSTALL_HINT}") from None
        self._ray = ray
        self.options = options
        self._connected = self._owns_connection = False
        self._actors: list = []
        self._n_workers: int | None = None
        #: what each worker of the latest ``map`` reported when set up (host, pid, device, model loads)
        self.workers: list[dict] = []
        self._devices: dict[ModelSpec, set[str]] = {}

    def driver_device(self, device: str) -> str:
        return "cpu"  # the driver only plans and writes; the workers hold the accelerators

    def check_device(self, device: str) -> None:
        gpus = self.options.gpus_per_worker
        if gpus > 0 and device == "cpu":
            raise ConfigError(f"--gpus-per-worker {gpus:g} reserves GPUs but the device is cpu; set the device to "
                              "cuda (--device cuda, or device: cuda in a sweep config)")
        if gpus == 0 and device.startswith("cuda"):
            raise ConfigError(f"device {device} on Ray workers needs --gpus-per-worker > 0 (Ray hides GPUs from "
                              "workers that reserve none)")
        if device.startswith("cuda:") and device != "cuda:0":
            raise ConfigError(f"device {device}: a Ray worker sees only its own GPU(s); use device cuda")

    def model_provenance(self, work: Work, lm: "LoadedModel") -> dict:
        """The driver's model (same weights, checked) on the workers' device(s); the configured
        device when this invocation computed nothing."""
        devices = self._devices.get(work.model) or {work.model.device}
        return {**lm.provenance(), "device": ",".join(sorted(devices))}

    # -- connection and workers -------------------------------------------------------------------
    def _connect(self) -> None:
        ray = self._ray
        if not ray.is_initialized():
            address = self.options.address or os.environ.get("RAY_ADDRESS") or None
            quiet = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
            handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                if address:
                    ray.init(address=address, **quiet)
                else:  # a private local instance, sized for the workers asked for
                    ray.init(address="local", num_cpus=self.options.workers or os.cpu_count() or 1, **quiet)
            except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                if not address:
                    raise EditbenchError(f"cannot start a local Ray instance: {first}") from None
                raise EditbenchError(f"cannot reach Ray at {address}: {first} (is the address right? a cluster that "
                                     "uses token authentication also needs RAY_AUTH_MODE=token and its token here)"
                                     ) from None
            self._owns_connection = True
            # Ray's core replaces the driver's SIGTERM handler with one that aborts (exit 134, a stack
            # dump); the previous handlers come back, so Ctrl-C and SIGTERM end as they do serially
            # (finished records saved, the CLI's line, exit 130/143) and the actors are stopped on the way.
            if threading.current_thread() is threading.main_thread():
                for sig, handler in handlers.items():
                    if handler is not None:
                        signal.signal(sig, handler)
        self._connected = True
        have = ray.cluster_resources()
        cpus, gpus = float(have.get("CPU", 0)), float(have.get("GPU", 0))
        per_gpu = self.options.gpus_per_worker
        fits = int(gpus // per_gpu) if per_gpu > 0 else int(cpus)
        n = self.options.workers or fits
        if n < 1 or n > cpus or n * per_gpu > gpus + 1e-9:
            raise EditbenchError(f"the Ray cluster has {cpus:g} CPU(s) and {gpus:g} GPU(s); {n} worker(s) need "
                                 f"{n} CPU(s) and {n * per_gpu:g} GPU(s) (set --workers / --gpus-per-worker)")
        self._n_workers = n

    def _ensure_actors(self, n: int) -> list:
        if not self._connected:
            self._connect()
        assert self._n_workers is not None
        n = min(n, self._n_workers)
        if len(self._actors) < n:
            # a worker whose process dies (preempted node, OOM kill) is restarted by Ray and the item it
            # was computing is run again there, up to WORKER_RETRIES times
            cls = self._ray.remote(_Worker).options(num_cpus=1, num_gpus=self.options.gpus_per_worker,
                                                      runtime_env={"env_vars": worker_env()},
                                                      max_restarts=WORKER_RETRIES, max_task_retries=WORKER_RETRIES)
            self._actors += [cls.remote(os.getcwd()) for _ in range(n - len(self._actors))]
        return self._actors[:n]

    # -- mapping ------------------------------------------------------------------------------------
    def map(self, work: Work, items: Iterable[Any], local: Bound) -> Iterator[Any]:
        from editbench.runs.provenance import source_sha256

        items = list(items)
        if not items:
            return
        actors = self._ensure_actors(len(items))
        with _worker_errors():
            infos = self._ray.get([a.setup.remote(work) for a in actors])
        driver_weights = local.lm.weights_hash
        for info in infos:
            if info["source_sha256"] != source_sha256():
                raise EditbenchError(f"the Ray worker on {info['host']} runs different editbench code (source sha256 "
                                     f"{info['source_sha256'][:12]}, driver {source_sha256()[:12]}); install the same "
                                     "version on every node")
            if info["weights_sha256"] != driver_weights:
                raise EditbenchError(f"the Ray worker on {info['host']} loaded other weights for {work.model.model} "
                                     f"(sha256 {info['weights_sha256'][:12]}, driver {driver_weights[:12]})")
        self.workers = infos
        self._devices.setdefault(work.model, set()).update(info["device"] for info in infos)
        ray = self._ray
        queue = list(enumerate(items))
        free, pending = list(actors), {}
        done: dict[int, tuple[Any, Exception | None]] = {}
        for i in range(len(items)):  # results arrive as workers finish; they leave in the items' order
            while i not in done:
                while free and queue:
                    index, item = queue.pop(0)
                    actor = free.pop(0)
                    pending[actor.run.remote(index, item, work)] = (index, item, actor)
                ready = _wait_one(ray, list(pending))
                index, item, actor = pending.pop(ready[0])
                with _worker_errors(item):
                    _, result, error = ray.get(ready[0])
                free.append(actor)
                done[index] = result, error
            result, error = done.pop(i)
            if error is not None:
                raise error
            yield result

    def close(self) -> None:
        ray = self._ray
        for actor in self._actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - the cluster may already be gone (Ctrl-C, shutdown)
                pass
        self._actors = []
        if self._owns_connection and ray.is_initialized():
            ray.shutdown()
        self._connected = self._owns_connection = False


@contextlib.contextmanager
def _worker_errors(item: Any = None) -> Iterator[None]:
    """Failed worker calls as the driver raises them: a worker's one-line errors (bad input, a
    missing file) as they are, so the CLI prints them as it does serially; a worker that died on the
    same item more often than Ray restarts it as one line naming the item; anything else (a bug) as
    Ray's error, which carries the remote traceback."""
    from ray.exceptions import RayActorError, RayTaskError

    try:
        yield
    except RayTaskError as e:
        if isinstance(e.cause, (EditbenchError, OSError)):
            raise e.cause from None
        raise
    except RayActorError as e:
        first = (str(e).strip().splitlines() or ["no reason given"])[0]
        what = "" if item is None else f" while computing {_describe(item)}, {WORKER_RETRIES + 1} times"
        raise EditbenchError(f"a Ray worker died{what} ({first}); finished results are saved, rerun the same "
                             "command to resume") from None


def _describe(item: Any) -> str:
    """An item in words for an error line: a sweep point, or a chunk of cases."""
    if hasattr(item, "key") and hasattr(item, "split"):
        return f"sweep point {item.method} s={item.strength:g} ({item.split})"
    if isinstance(item, list) and item and hasattr(item[0], "case_id"):
        return f"the chunk of cases {item[0].case_id}..{item[-1].case_id}"
    return f"item {item!r:.60}"


def _wait_one(ray, refs: list) -> list:
    """``ray.wait`` for one finished reference. A signal handler's exception raised while Ray's C
    core waits (the CLI's SIGTERM -> Terminated, Ctrl-C) comes back wrapped in a SystemError;
    it is re-raised as itself so that the CLI's own handling (exit 143 / 130) applies."""
    try:
        ready, _ = ray.wait(refs, num_returns=1)
    except SystemError as e:
        if e.__cause__ is not None:
            raise e.__cause__ from None
        raise
    return ready
