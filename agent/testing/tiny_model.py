"""Tiny Qwen3 checkpoints shaped like `Qwen/Qwen3-0.6B-GPTQ-Int8`, built here for tests.

`build_tiny_checkpoint(dir)` writes two models, each in bf16 with the tokenizer and as GPTQ
(8-bit, group size 128, symmetric, no act-order, in the `gptq` checkpoint format):
- `trained-float`, `trained-gptq-int8`: trained on scripted agent runs (`transcripts.py`, by
  `training.py`) until it makes their tool calls and quotes the tools' results, for end-to-end
  tests; `train` writes its weights (committed, ~1 MB), `build` loads them;
- `float`, `gptq-int8`: seeded random weights, for tests of the generation mechanics (it never
  stops on its own and its sampling is spread out).
Both are deterministic: fixed seeds, a fixed thread count, fixed calibration texts.

    python -m agent.testing.tiny_model build DIR [--no-quantize] [--no-trained] [--seed N]
    python -m agent.testing.tiny_model train [--out FILE]   # the trained weights, from scratch
    python -m agent.testing.tiny_model check DIR            # transcripts reproduced, per kind
"""

import argparse
import contextlib
import hashlib
import json
import os
import random
import sys
import tempfile
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from agent.paths import cache_dir
from agent.testing.tokenizer import build_qwen3_tokenizer
from agent.testing.training import TinyQwen3Trainer, train_tiny_model
from agent.testing.transcripts import (
    TASKS,
    load_tool_schemas,
    random_runs,
    random_transcript,
    render_transcript,
)

FLOAT_SUBDIR = "float"
GPTQ_SUBDIR = "gptq-int8"
TRAINED_FLOAT_SUBDIR = "trained-float"
TRAINED_GPTQ_SUBDIR = "trained-gptq-int8"
EOS_TOKEN_IDS = (151645, 151643)  # <|im_end|>, <|endoftext|>
ENDOFTEXT_ID = 151643  # <|endoftext|>: bos, pad and the second eos
# Qwen3's is 1,000,000; 10,000 resolves the short distances the tiny model copies across.
ROPE_THETA = 10_000.0

CALIBRATION_TRANSCRIPTS = 16
# The trained weights (`train_weights`), committed: training takes longer than a test session
# should (see the README); `build` loads them.
TRAINED_WEIGHTS = Path(__file__).with_name("tiny_trained.safetensors")
TRAINING_THREADS = 2
GPTQ_BITS = 8
GPTQ_GROUP_SIZE = 128

_BUILD_SOURCES = (
    "tiny_model.py",
    "tokenizer.py",
    "chat_template.py",
    "transcripts.py",
    "training.py",
    "default_tool_schemas.json",
    "tiny_trained.safetensors",
    "../backends/local.py",  # renders the training prompts
)
_BUILD_PACKAGES = ("torch", "transformers", "gptqmodel", "tokenizers", "qwen-agent")


def qwen3_config(
    *,
    hidden: int,
    intermediate: int,
    layers: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    rope_theta: float,
    max_positions: int,
) -> Qwen3Config:
    """A Qwen3ForCausalLM config of these sizes, with Qwen3's vocabulary, tokens and norms."""
    return Qwen3Config(
        vocab_size=151936,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        hidden_act="silu",
        max_position_embeddings=max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        attention_bias=False,
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=layers,
        bos_token_id=ENDOFTEXT_ID,
        eos_token_id=EOS_TOKEN_IDS[0],
        pad_token_id=ENDOFTEXT_ID,
        dtype="bfloat16",
    )


def tiny_config() -> Qwen3Config:
    """Qwen3-0.6B's architecture, shrunk; every input width is a multiple of the group size.
    2 query heads per key/value head, as in Qwen3-0.6B (16/8)."""
    return qwen3_config(
        hidden=128,
        intermediate=256,
        layers=2,
        heads=8,
        kv_heads=4,
        head_dim=32,
        rope_theta=ROPE_THETA,
        max_positions=32768,
    )


def odd_config() -> Qwen3Config:
    """The tiny architecture with sizes that are multiples of nothing the kernels like: hidden
    136, intermediate 392, 4 heads of 34 (attention output 136)."""
    return qwen3_config(
        hidden=136,
        intermediate=392,
        layers=2,
        heads=4,
        kv_heads=2,
        head_dim=34,
        rope_theta=ROPE_THETA,
        max_positions=32768,
    )


def generation_config() -> GenerationConfig:
    """Qwen3's published generation defaults (the thinking-mode sampling preset)."""
    return GenerationConfig(
        bos_token_id=ENDOFTEXT_ID,
        eos_token_id=list(EOS_TOKEN_IDS),
        pad_token_id=ENDOFTEXT_ID,
        do_sample=True,
        temperature=0.6,
        top_p=0.95,
        top_k=20,
    )


def random_model(seed: int, config: Qwen3Config | None = None) -> Qwen3ForCausalLM:
    """The tiny model (or one of `config`) with seeded random weights, in bf16."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config or tiny_config())
    return model.to(torch.bfloat16).eval()  # type: ignore[arg-type]


def calibration_texts(tokenizer: PreTrainedTokenizerFast) -> list[str]:
    """A few dozen short prompts in the shapes the agent sends: chat turns, tool calls, code."""
    questions = [
        "What time is it in Tokyo?",
        "Summarise this page in two sentences.",
        "Compute 17 * 23 with the code interpreter.",
        "今天北京的天气怎么样？",
        "Write a Python function that reverses a string.",
        "List three prime numbers greater than 100.",
        "Translate 'good morning' into French and German.",
        "Why is the sky blue? Answer briefly.",
    ]
    tool_call = {"name": "get_time", "arguments": {"timezone": "Asia/Tokyo"}}
    texts = []
    for question in questions:
        for thinking in (True, False):
            texts.append(_render(tokenizer, [{"role": "user", "content": question}], thinking))
        call = {"role": "assistant", "content": "", "tool_calls": [tool_call]}
        result = {"role": "tool", "content": '{"time": "09:30", "ok": true}'}
        texts.append(_render(tokenizer, [{"role": "user", "content": question}, call, result]))
        texts.append(f"def answer():\n    # {question}\n    return {len(question)}\n")
    return texts


def _render(tokenizer: PreTrainedTokenizerFast, messages: list[dict], thinking: bool = True) -> str:
    return str(
        tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=thinking
        )
    )


def save_float_checkpoint(
    model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast, out_dir: Path
) -> Path:
    """Write the float model with its tokenizer and generation config, as the hub lays them out."""
    model.save_pretrained(out_dir)
    finish_checkpoint(out_dir, tokenizer)
    return out_dir


def transcript_texts(tokenizer: PreTrainedTokenizerFast, count: int, seed: int) -> list[str]:
    """Whole model calls (prompt and scripted output) of random transcripts: calibration for
    the trained model, which has only ever seen such text."""
    rng = random.Random(seed)
    schemas = load_tool_schemas()
    return [
        prompt + output
        for _ in range(count)
        for prompt, output in render_transcript(random_transcript(rng), tokenizer, schemas)
    ]


def quantize_checkpoint(
    float_dir: Path,
    out_dir: Path,
    tokenizer: PreTrainedTokenizerFast,
    texts: list[str] | None = None,
    group_size: int = GPTQ_GROUP_SIZE,
) -> Path:
    """GPTQ-quantize a float checkpoint (8 bits, `group_size`, sym, no act-order) on the CPU,
    calibrated on `texts` (default: `calibration_texts`). Group size -1 is one group per output
    channel: GPTQModel 7.6 supports only group sizes that are multiples of 16, so a model whose
    sizes are not is quantized so (with its activation-aware grouping off, which needs groups)."""
    # GPTQModel wants two CPU workers for its loader pool; a 2-core machine gives it one.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    from gptqmodel import GPTQModel, QuantizeConfig

    config = QuantizeConfig(
        bits=GPTQ_BITS,
        group_size=group_size,
        sym=True,
        desc_act=False,
        act_group_aware=group_size > 0,
        # Pure-torch packing: the default compiles a C++ extension (g++, ~45 s) on first use.
        pack_impl="original",
        # Otherwise a random temporary path lands in the saved config, breaking determinism.
        offload_to_disk=False,
    )
    float_dir, out_dir = float_dir.resolve(), out_dir.resolve()
    # GPTQModel writes a `logs/` folder into the current directory: keep it out of the user's.
    with tempfile.TemporaryDirectory() as scratch, _working_directory(Path(scratch)):
        model = GPTQModel.load(str(float_dir), config, device="cpu")
        texts = texts or calibration_texts(tokenizer)
        model.quantize([dict(tokenizer(text)) for text in texts])
        model.save(str(out_dir))
    (out_dir / "quant_log.csv").unlink(missing_ok=True)
    finish_checkpoint(out_dir, tokenizer)
    return out_dir


def finish_checkpoint(out_dir: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    """Our tokenizer files and generation config, and a top-level `rope_theta` in config.json."""
    (out_dir / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer.save_pretrained(out_dir, save_jinja_files=False)
    generation_config().save_pretrained(out_dir)
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["rope_theta"] = config["rope_parameters"]["rope_theta"]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """`count` intra-op threads for a while: results are bit-identical for a given count (one
    thread also avoids spin-waiting on a busy 2-core box)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def build_tiny_checkpoint(
    out_dir: Path, *, seed: int = 0, quantize: bool = True, trained: bool = True
) -> Path:
    """Build the checkpoints into `out_dir`: `float/` (random weights) and, unless `trained` is
    off, `trained-float/` from the committed trained weights; with `quantize`, the GPTQ copy of
    each (`gptq-int8/`, `trained-gptq-int8/`)."""
    out_dir = Path(out_dir)
    tokenizer = build_qwen3_tokenizer()
    with _torch_threads(1):
        float_dir = save_float_checkpoint(random_model(seed), tokenizer, out_dir / FLOAT_SUBDIR)
        if quantize:
            quantize_checkpoint(float_dir, out_dir / GPTQ_SUBDIR, tokenizer)
        if trained:
            model = random_model(seed)
            model = TinyQwen3Trainer.load(model, TRAINED_WEIGHTS).export(model)
            trained_dir = save_float_checkpoint(model, tokenizer, out_dir / TRAINED_FLOAT_SUBDIR)
            if quantize:
                texts = transcript_texts(tokenizer, CALIBRATION_TRANSCRIPTS, seed + 1)
                quantize_checkpoint(trained_dir, out_dir / TRAINED_GPTQ_SUBDIR, tokenizer, texts)
    return out_dir


def build_odd_checkpoint(out_dir: Path, *, seed: int = 0) -> Path:
    """A random GPTQ-Int8 checkpoint of `odd_config`'s sizes (one group per channel) in
    `out_dir`, and its float original in `out_dir`/float."""
    tokenizer = build_qwen3_tokenizer()
    with _torch_threads(1):
        model = random_model(seed, odd_config())
        float_dir = save_float_checkpoint(model, tokenizer, out_dir / FLOAT_SUBDIR)
        quantize_checkpoint(float_dir, out_dir / GPTQ_SUBDIR, tokenizer, group_size=-1)
    return out_dir


def train_weights(out: Path, *, seed: int = 0, threads: int = TRAINING_THREADS) -> Path:
    """Train the tiny model from its random weights and save what `build` loads (`out`)."""
    tokenizer = build_qwen3_tokenizer()
    with _torch_threads(threads):
        trainer = train_tiny_model(random_model(seed), tokenizer, seed, log=_progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    trainer.save(out)
    return out


def _progress(line: str) -> None:
    print(f"training: {line}", file=sys.stderr, flush=True)


def checkpoint_version() -> str:
    """A short hash of everything the build depends on: our sources and the library versions."""
    digest = hashlib.sha256()
    for name in _BUILD_SOURCES:
        digest.update((Path(__file__).parent / name).read_bytes())
    for package in _BUILD_PACKAGES:
        digest.update(f"{package}=={metadata.version(package)}\n".encode())
    return digest.hexdigest()[:12]


def cached_tiny_checkpoint() -> Path:
    """The quantized tiny checkpoint in the app's cache, built on first use."""
    return _cached(f"tiny-model-{checkpoint_version()}", build_tiny_checkpoint)


def cached_odd_checkpoint() -> Path:
    """The odd-sized checkpoint (`build_odd_checkpoint`) in the app's cache, built on first use."""
    return _cached(f"tiny-odd-model-{checkpoint_version()}", build_odd_checkpoint)


def _cached(name: str, build: Callable[[Path], Path]) -> Path:
    """`build`'s checkpoint in the app's cache under `name`, built on first use.

    The build goes to a temporary directory beside the target and is renamed into place, so a
    half-written build is never seen; if a concurrent build wins the rename, its copy is used.
    """
    target = cache_dir() / name
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}-", dir=target.parent) as scratch:
        built = build(Path(scratch) / "checkpoint")
        try:
            built.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    return target


def main(argv: list[str] | None = None) -> int:
    """Command line: `build DIR [--no-quantize] [--no-trained] [--seed N]`, `train [--out F]`,
    `check DIR`."""
    parser = argparse.ArgumentParser(prog="python -m agent.testing.tiny_model")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the tiny Qwen3 checkpoint into DIR")
    build.add_argument("dir", type=Path)
    build.add_argument("--no-quantize", dest="quantize", action="store_false")
    build.add_argument(
        "--no-trained", dest="trained", action="store_false", help="the random model only"
    )
    build.add_argument("--seed", type=int, default=0)
    train = commands.add_parser(
        "train", help=f"train the tiny model and write its weights (default {TRAINED_WEIGHTS})"
    )
    train.add_argument("--out", type=Path, default=TRAINED_WEIGHTS)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=TRAINING_THREADS)
    check = commands.add_parser(
        "check", help="count the transcripts a built DIR reproduces, before and after GPTQ"
    )
    check.add_argument("dir", type=Path)
    check.add_argument("--per-kind", type=int, default=4)
    args = parser.parse_args(argv)
    if args.command == "check":
        return _check(args.dir, args.per_kind)
    if args.command == "train":
        print(train_weights(args.out, seed=args.seed, threads=args.threads))
        return 0
    if args.dir.exists() and any(args.dir.iterdir()):
        parser.error(f"{args.dir} is not empty")
    with contextlib.redirect_stdout(sys.stderr):  # GPTQModel prints its progress to stdout.
        built = build_tiny_checkpoint(
            args.dir, seed=args.seed, quantize=args.quantize, trained=args.trained
        )
    print(built)
    return 0


def _check(built: Path, per_kind: int) -> int:
    from agent.testing.reproduction import held_out_runs, reproduction_counts, total

    sets = {
        "training": random_runs(per_kind * len(TASKS), seed=0),
        "held-out": held_out_runs(per_kind),
    }
    for subdir in (TRAINED_FLOAT_SUBDIR, TRAINED_GPTQ_SUBDIR):
        for name, transcripts in sets.items():
            with contextlib.redirect_stdout(sys.stderr):
                counts = reproduction_counts(built / subdir, transcripts)
            right, runs = total(counts)
            kinds = ", ".join(f"{kind} {r}/{n}" for kind, (r, n) in counts.items())
            print(f"{subdir} {name}: {right}/{runs} exact ({kinds})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
