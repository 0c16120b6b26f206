"""Finding, downloading and loading a Qwen3 checkpoint (GPTQ or unquantized) in-process.

Two engines run it: on CPU our own (`native`: int8 weight-only matmuls, agent/engine/
model.py), on CUDA transformers with GPTQModel's GPU kernels (`transformers`, also
available on CPU as the reference the native engine is checked against).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent.config import DEFAULT_DISK_CACHE_MB, DEFAULT_KV_CACHE_MB, ENGINES
from agent.engine.checkpoint import check_model_dir, quantization_config, read_config
from agent.errors import ModelLoadError
from agent.paths import cache_dir

log = logging.getLogger("agent")

# GPTQModel kernel per device: on CPU its int8 torch kernel decodes ~3x faster than the default
# (DESIGN.md); on CUDA GPTQModel picks the fastest GPU kernel (Marlin, ExLlama ...) itself.
CPU_GPTQ_BACKEND = "gptq_torch_int8"
CUDA_GPTQ_BACKEND = "auto"
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken"]


class Engine(Protocol):
    """What generation needs of a loaded model: prefix-reusing caches and a forward step."""

    vocab_size: int

    def checkout(self, prompt: list[int], stable: int = 0) -> Any: ...

    def checkin(self, cache: Any) -> None: ...

    def forward(self, tokens: list[int], cache: Any) -> Any: ...


@dataclass
class LoadedModel:
    """A model ready to generate, with what a user should know about how it was loaded."""

    engine: Engine
    tokenizer: Any
    stop_ids: frozenset[int]
    path: Path
    device: str
    dtype: str
    quantization: str
    kernel: str
    load_s: float
    user_turn: tuple[int, ...] = ()  # the tokens that open a user turn: the stable part ends
    memory_bytes: int = 0  # what loading it added to the process's resident memory

    def stable_prefix(self, prompt: list[int]) -> int:
        """How many leading tokens of `prompt` come before its first user turn (the system
        prompt and tool schemas, the same from run to run); 0 when it has none."""
        if not self.user_turn:
            return 0
        start, width = -1, len(self.user_turn)
        while True:
            try:
                start = prompt.index(self.user_turn[0], start + 1)
            except ValueError:
                return 0
            if tuple(prompt[start : start + width]) == self.user_turn:
                return start


_LOADED: dict[tuple[str, str, str, int, int], LoadedModel] = {}


def _quiet_dependency_logs() -> None:
    # torchao (pulled in by gptqmodel) warns at import about CUDA libraries a CPU machine lacks.
    for name in ("torchao", "torchao.kernel.intmm", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def resolve_model_dir(model: str) -> Path:
    """A local directory holding `model`: the directory itself, or a hub download (cached)."""
    candidate = Path(model).expanduser()
    if candidate.is_dir():
        if not (candidate / "config.json").is_file():
            raise ModelLoadError(f"{candidate} is not a model directory (no config.json in it)")
        return candidate.resolve()
    if candidate.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelLoadError(
            f"model directory {model} not found; pass --model with a local directory "
            "or a hub id such as Qwen/Qwen3-0.6B-GPTQ-Int8"
        )
    return _download(model)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    log.info("fetching %s from the Hugging Face hub (cached after the first time)", repo_id)
    try:
        return Path(snapshot_download(repo_id=repo_id, allow_patterns=HUB_FILES))
    except RepositoryNotFoundError:
        raise ModelLoadError(f"no model named {repo_id} on the Hugging Face hub") from None
    except (OSError, HfHubHTTPError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(
            f"cannot get {repo_id}: the Hugging Face hub is unreachable and no copy is cached "
            f"({reason}); download it on a connected machine "
            f"(`hf download {repo_id} --local-dir DIR`) and pass --model DIR"
        ) from None


def pick_device(requested: str) -> str:
    """`auto` is CUDA when torch sees a GPU, else CPU."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for but torch sees no GPU; use --device cpu")
    if requested != "cpu" and not requested.startswith("cuda"):
        raise ModelLoadError(f"unknown device {requested!r}; use auto, cpu or cuda")
    return requested


def pick_engine(requested: str, device: str) -> str:
    """`auto` is our native engine on CPU and transformers on CUDA."""
    if requested not in ENGINES:
        raise ModelLoadError(f"unknown engine {requested!r}; use {', '.join(ENGINES)}")
    if requested == "native" and device != "cpu":
        raise ModelLoadError("the native engine runs on CPU only; use --engine transformers")
    if requested == "auto":
        return "native" if device == "cpu" else "transformers"
    return requested


def _load_kwargs(quant: dict[str, Any] | None, device: str) -> dict[str, Any]:
    import torch

    if quant is None:
        dtype = (
            torch.bfloat16 if device == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
        )
        return {"dtype": dtype}
    method = quant.get("quant_method", "gptq")
    if method != "gptq":
        raise ModelLoadError(f"quantization {method!r} is not supported; use a GPTQ checkpoint")
    from transformers import GPTQConfig

    backend = CPU_GPTQ_BACKEND if device == "cpu" else CUDA_GPTQ_BACKEND
    # bf16 on CPU: our CPUs have avx512_bf16 but no fp16 path (fp16 ran 12-35x slower).
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    return {"dtype": dtype, "quantization_config": GPTQConfig(bits=quant["bits"], backend=backend)}


def _kernel_name(model: Any) -> str:
    for module in model.modules():
        if type(module).__module__.startswith("gptqmodel."):
            return type(module).__name__
    return "torch (unquantized)"


def load_local_model(
    model: str,
    device: str = "auto",
    threads: int | None = None,
    engine: str = "auto",
    kv_cache_mb: int = DEFAULT_KV_CACHE_MB,
    disk_cache_mb: int = DEFAULT_DISK_CACHE_MB,
) -> LoadedModel:
    """Load `model` (hub id or directory) once per process; later calls with the same
    arguments reuse it (other cache budgets load it anew: an engine keeps the budgets it got).

    `kv_cache_mb` bounds the memory kept for reusing prompt prefixes across calls,
    `disk_cache_mb` the disk kept for reusing their stable part across processes.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    device = pick_device(device)
    engine = pick_engine(engine, device)
    key = (model, device, engine, kv_cache_mb, disk_cache_mb)
    if key in _LOADED:
        _LOADED[key] = _LOADED.pop(key)  # the most recently used last
        return _LOADED[key]
    path = resolve_model_dir(model)
    check_model_dir(path)
    _quiet_dependency_logs()
    started = time.monotonic()
    resident_before = _resident_bytes()
    quant = quantization_config(path, read_config(path))
    cache_bytes = kv_cache_mb << 20
    try:
        if engine == "native":
            loaded = _load_native(path, quant, cache_bytes, disk_cache_mb << 20)
        else:
            loaded = _load_transformers(path, device, quant, cache_bytes)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        # What check_model_dir cannot see (tensors of the wrong shape, a broken tokenizer
        # file): still one line; --debug logs the traceback.
        log.debug("loading %s failed", path, exc_info=True)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(
            f"cannot load the model in {path}: {type(exc).__name__}: {reason}; is it a "
            "complete Qwen3 checkpoint? (--debug shows where it failed)"
        ) from None
    loaded.load_s = time.monotonic() - started
    loaded.memory_bytes = max(_resident_bytes() - resident_before, 0)
    loaded.user_turn = _user_turn(loaded.tokenizer)
    log.info(
        "loaded %s on %s in %.1f s (%s, %s, %s)",
        model,
        device,
        loaded.load_s,
        loaded.quantization,
        loaded.dtype,
        loaded.kernel,
    )
    _LOADED[key] = loaded
    return loaded


def _resident_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def loaded_models() -> list[tuple[str, str, str, LoadedModel]]:
    """The models this process holds (model, device, engine, the model), least recently used
    first."""
    return [(key[0], key[1], key[2], loaded) for key, loaded in _LOADED.items()]


def unload_beyond(budget_bytes: int) -> list[str]:
    """Drop the least recently used models until the rest fit in `budget_bytes` (the most
    recent one is always kept); the names of those dropped."""
    dropped = []
    while len(_LOADED) > 1 and sum(m.memory_bytes for m in _LOADED.values()) > budget_bytes:
        key = next(iter(_LOADED))
        del _LOADED[key]
        dropped.append(key[0])
    if dropped:
        import gc

        gc.collect()
    return dropped


def _load_tokenizer(path: Path, fast: bool = False) -> Any:
    """transformers' tokenizer, or with `fast` our lighter one over the same files (the native
    engine's cold start: see agent/engine/tokenizer.py)."""
    try:
        tokenizer = _fast_tokenizer(path) if fast else _transformers_tokenizer(path)
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"cannot load the tokenizer in {path}: {reason}") from None
    if tokenizer.chat_template is None:
        raise ModelLoadError(f"{path} has no chat template in its tokenizer files")
    return tokenizer


def _transformers_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _fast_tokenizer(path: Path) -> Any:
    from agent.engine.tokenizer import FastTokenizer

    try:
        return FastTokenizer.from_dir(path)
    except Exception as exc:  # the Rust library raises plain Exception for a bad tokenizer.json
        raise ValueError(str(exc)) from None


def _stop_ids(path: Path, tokenizer: Any) -> frozenset[int]:
    """End-of-turn ids: <|im_end|>, the tokenizer's eos and generation_config's eos."""
    ids = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id]
    generation = path / "generation_config.json"
    if generation.is_file():
        eos = json.loads(generation.read_text(encoding="utf-8")).get("eos_token_id")
        ids.extend(eos if isinstance(eos, list) else [eos])
    return frozenset(i for i in ids if isinstance(i, int) and i >= 0)


def _user_turn(tokenizer: Any) -> tuple[int, ...]:
    opener = tokenizer.convert_tokens_to_ids("<|im_start|>")
    if not isinstance(opener, int) or opener < 0:
        return ()
    return (opener, *tokenizer("user", add_special_tokens=False)["input_ids"])


def _load_native(
    path: Path, quant: dict[str, Any] | None, cache_bytes: int, store_bytes: int
) -> LoadedModel:
    from safetensors import SafetensorError

    from agent.engine.model import KV_FORMAT, CpuQwen3
    from agent.engine.prefix_store import PrefixStore
    from agent.engine.weights import checkpoint_key

    tokenizer = _load_tokenizer(path, fast=True)
    int8_lm_head = quant is not None
    try:
        engine = CpuQwen3.load(path, cache_bytes, int8_lm_head, cache_dir() / "repacked")
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"cannot load the model in {path}: {reason}") from None
    if store_bytes > 0:
        # Keys and values depend on the kernels too (their rounding): a prefix stored under
        # other kernels is computed afresh.
        kernels = engine.kernels.describe()
        identity = f"{KV_FORMAT}\n{kernels}\n{checkpoint_key(path, int8_lm_head)}"
        engine.prefix_store = PrefixStore(cache_dir() / "prefixes", identity, store_bytes)
    quantization = engine.weights.quantization
    fused = ", one compiled call a decoded token" if engine.fused_decode is not None else ""
    kernel = (
        f"native ({engine.kernels.describe()}, int8 lm_head{fused})" if quant else "native bf16"
    )
    return LoadedModel(
        engine=engine,
        tokenizer=tokenizer,
        stop_ids=_stop_ids(path, tokenizer),
        path=path,
        device="cpu",
        dtype="bfloat16",
        quantization=quantization,
        kernel=kernel,
        load_s=0.0,
    )


@contextlib.contextmanager
def _dependency_output_to_stderr() -> Iterator[None]:
    """GPTQModel logs to stdout (at import and while loading), which would break `--json`."""
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        # transformers warns that the checkpoint's own quantization_config wins over ours
        # (it does, except for the kernel we pick) and about deprecations not ours to fix.
        warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
        warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
        yield


def _load_transformers(
    path: Path, device: str, quant: dict[str, Any] | None, cache_bytes: int
) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    from agent.engine.transformers_engine import TransformersEngine

    kwargs = _load_kwargs(quant, device)
    tokenizer = _load_tokenizer(path)
    try:
        with _dependency_output_to_stderr():
            model = AutoModelForCausalLM.from_pretrained(path, device_map=device, **kwargs)
    except ImportError as exc:
        raise ModelLoadError(f"cannot load {path}: {exc}") from None
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0]
        raise ModelLoadError(f"cannot load the model in {path}: {reason}") from None
    model.eval()
    quantization = f"gptq int{quant['bits']}" if quant else "none"
    return LoadedModel(
        engine=TransformersEngine(model, cache_bytes),
        tokenizer=tokenizer,
        stop_ids=_stop_ids(path, tokenizer),
        path=path,
        device=device,
        dtype=str(kwargs["dtype"]).removeprefix("torch."),
        quantization=quantization,
        kernel=f"transformers, {_kernel_name(model)}",
        load_s=0.0,
    )
