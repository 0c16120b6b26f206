"""llama.cpp, the peer the speed benchmark compares with: built once, cached, never a runtime
dependency of the app.

`python -m bench.llama_cpp setup` downloads the llama-cpp-python sdist, builds its wheel (about
10 minutes on 2 cores; kept in the cache), installs it with the two packages its converter
needs, and keeps the `convert_hf_to_gguf.py` vendored in the sdist. `gguf_for(model_dir)`
converts a checkpoint (GPTQ-Int8 included) to GGUF Q8_0 once and caches the file.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from agent.paths import cache_dir

VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{VERSION}"


def home() -> Path:
    """Where the sdist, the built wheel and the converter live."""
    return cache_dir() / "bench" / f"llama-cpp-{VERSION}"


def converter_dir() -> Path:
    return home() / SDIST / "vendor" / "llama.cpp"


def unavailable_reason() -> str | None:
    """Why the llama.cpp path cannot run here, or None when it can."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama-cpp-python is not installed (python -m bench.llama_cpp setup)"
    if not (converter_dir() / "convert_hf_to_gguf.py").is_file():
        return f"no converter in {converter_dir()} (python -m bench.llama_cpp setup)"
    return None


def setup() -> None:
    """Download, build (cached) and install llama-cpp-python; unpack its converter."""
    home().mkdir(parents=True, exist_ok=True)
    sdist = home() / f"{SDIST}.tar.gz"
    pip = [sys.executable, "-m", "pip"]
    if not sdist.is_file():
        subprocess.run(
            [*pip, "download", f"llama-cpp-python=={VERSION}", "--no-binary", ":all:"]
            + ["--no-deps", "-d", str(home())],
            check=True,
        )
    if not converter_dir().is_dir():
        with tarfile.open(sdist) as archive:
            archive.extractall(home(), filter="data")
    wheels = home() / "wheels"
    if not list(wheels.glob("*.whl")):
        env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)}
        env.setdefault("CMAKE_ARGS", "-DGGML_NATIVE=ON")
        subprocess.run(
            [*pip, "wheel", "--no-deps", str(sdist), "-w", str(wheels)], check=True, env=env
        )
    wheel = next(wheels.glob("*.whl"))
    # --no-deps: its declared numpy range must not move the app's packages.
    subprocess.run([*pip, "install", "--no-deps", str(wheel)], check=True)
    subprocess.run([*pip, "install", "diskcache", "sentencepiece"], check=True)


def gguf_for(model_dir: Path) -> Path:
    """The checkpoint converted to GGUF Q8_0 (cached beside the converter)."""
    target = home() / "gguf" / f"{model_dir.name}-q8_0.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f".{target.name}.tmp")
    source = converter_dir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source / "gguf-py"), str(source)])}
    command = [sys.executable, str(source / "convert_hf_to_gguf.py"), str(model_dir)]
    command += ["--outtype", "q8_0", "--outfile", str(scratch)]
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    scratch.rename(target)
    return target


def open_model(gguf: Path, threads: int, n_ctx: int = 8192, draft_model: Any = None) -> Any:
    """A `llama_cpp.Llama` on `gguf`, on llama.cpp's plain CPU weights, with `draft_model` (a
    `llama_cpp.llama_speculative.LlamaDraftModel`) drafting tokens for it where given.

    Workaround: with its extra buffer types on (the default), llama.cpp 0.3.36 repacks Q8_0
    weights for AMX where the CPU has it, and on our AMX build machines the first `eval` then
    dies (SIGSEGV or SIGILL, in a bare `python -c` too). Its plain CPU path works everywhere,
    and on x86 it has no other repack for Q8_0, so this changes nothing on other CPUs.

    Workaround: with a draft model, 0.3.36 keeps every position's logits but sizes their buffer
    by the `logits_all` argument, so the first prompt fails to be stored (could not broadcast
    into shape (0,)) unless `logits_all` is passed as True too."""
    import llama_cpp
    import llama_cpp.llama

    defaults = llama_cpp.llama_model_default_params

    def without_repacking() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    llama_cpp.llama.llama_cpp.llama_model_default_params = without_repacking
    try:
        return llama_cpp.Llama(
            model_path=str(gguf),
            n_ctx=n_ctx,
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            draft_model=draft_model,
            logits_all=draft_model is not None,
            verbose=False,
        )
    finally:
        llama_cpp.llama.llama_cpp.llama_model_default_params = defaults


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.llama_cpp")
    parser.add_argument("command", choices=["setup"])
    parser.parse_args(argv)
    setup()
    print(f"llama.cpp ready: converter in {converter_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
