"""Every workaround for Qwen-Agent 0.0.34's side effects, in one place.

`agent/__init__.py` installs an import hook (`install`): the first `import qwen_agent`, by
whichever module, runs with these workarounds in place, and a command that never needs
Qwen-Agent (the resident service's light client) never imports it:
- Qwen-Agent creates `./workspace/` in the current directory: we point its workspace under
  `AGENT_HOME` (its settings read `QWEN_AGENT_DEFAULT_WORKSPACE` at import time).
- Its tool loop ends silently after 20 LLM calls; ours replaces it (AgentAssistant._run in
  agent/loop/assistant.py, with a step limit that ends in a final answer).
- Its tool-call parser drops calls a small model makes; ours replaces it
  (agent/loop/call_parser.py).
- Importing its tools installs SIGINT/SIGTERM handlers (to kill its Docker kernels); we restore
  the handlers that were there, so Ctrl-C stays ours.
- It logs INFO and WARNING lines to stderr (one per tool we register under its own names); we
  keep only errors unless `--debug`.
- `qwen_agent.llm` imports every model backend it has (OpenAI, Azure, DashScope, OpenVINO...),
  and with them `openai` and `dashscope`: about a second of every start, for backends a run
  does not use. They are imported when first used instead (`_defer_llm_backends`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import signal
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

from agent.paths import cache_dir

QWEN_AGENT_LOGGER = "qwen_agent_logger"
# The backend modules `qwen_agent/llm/__init__.py` imports: the class it takes from each, and
# the model type each registers.
DEFERRED_LLM_BACKENDS = {
    "azure": ("TextChatAtAzure", "azure"),
    "oai": ("TextChatAtOAI", "oai"),
    "openvino": ("OpenVINO", "openvino"),
    "qwen_dashscope": ("QwenChatAtDS", "qwen_dashscope"),
    "qwenaudio_dashscope": ("QwenAudioChatAtDS", "qwenaudio_dashscope"),
    "qwenomni_oai": ("QwenOmniChatAtOAI", "qwenomni_oai"),
    "qwenvl_dashscope": ("QwenVLChatAtDS", "qwenvl_dashscope"),
    "qwenvl_oai": ("QwenVLChatAtOAI", "qwenvl_oai"),
    "qwenvlo_dashscope": ("QwenVLoChatAtDS", "qwenvlo_dashscope"),
    "transformers_llm": ("Transformers", "transformers"),
}


class _DeferredRegistry(dict[str, Any]):
    """Qwen-Agent's model-type registry (`LLM_REGISTRY`) that imports a deferred backend's
    module when its model type is first looked up, so `get_chat_model` finds every type."""

    def __missing__(self, model_type: str) -> Any:
        self._import(model_type)
        return dict.__getitem__(self, model_type)

    def __contains__(self, model_type: object) -> bool:
        if isinstance(model_type, str):
            self._import(model_type)
        return dict.__contains__(self, model_type)

    def _import(self, model_type: str) -> None:
        if dict.__contains__(self, model_type):
            return
        for module, (_, registered) in DEFERRED_LLM_BACKENDS.items():
            if registered == model_type:
                importlib.import_module(f"qwen_agent.llm.{module}")


def _import_qwen_agent_keeping_signal_handlers() -> None:
    handled = (signal.SIGINT, signal.SIGTERM)
    saved = {sig: signal.getsignal(sig) for sig in handled}
    with _defer_llm_backends():
        import qwen_agent.agents  # noqa: F401  (installs handlers as a side effect)
        import qwen_agent.tools  # noqa: F401

    for sig, handler in saved.items():
        if handler is not None:
            signal.signal(sig, handler)


@contextlib.contextmanager
def _defer_llm_backends() -> Iterator[None]:
    """While `qwen_agent.llm` first imports, its backend modules are empty stand-ins; after,
    the stand-ins are gone, and a backend's real module is imported when something first asks
    `qwen_agent.llm` for its class or the registry for its model type (`import
    qwen_agent.llm.oai` imports the real module as usual)."""
    if "qwen_agent.llm" in sys.modules:
        yield
        return
    stand_ins = {}
    for module, (class_name, _) in DEFERRED_LLM_BACKENDS.items():
        stand_in = types.ModuleType(f"qwen_agent.llm.{module}")
        setattr(stand_in, class_name, None)
        stand_ins[stand_in.__name__] = sys.modules[stand_in.__name__] = stand_in
    try:
        yield
    finally:
        for name, stand_in in stand_ins.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]
        llm = sys.modules.get("qwen_agent.llm")
        if llm is not None:
            for module, (class_name, _) in DEFERRED_LLM_BACKENDS.items():
                if getattr(llm, module, None) is stand_ins[f"qwen_agent.llm.{module}"]:
                    delattr(llm, module)
                if module not in llm.__dict__ and getattr(llm, class_name, 0) is None:
                    delattr(llm, class_name)
            llm.__dict__["__getattr__"] = _backend_class
            # Both modules look the registry up by name: the same object goes in both.
            base = sys.modules["qwen_agent.llm.base"]
            registry = _DeferredRegistry(base.LLM_REGISTRY)
            base.__dict__["LLM_REGISTRY"] = llm.__dict__["LLM_REGISTRY"] = registry


def _backend_class(name: str) -> Any:
    """`qwen_agent.llm.<backend class>`, imported from its module on first use."""
    for module, (class_name, _) in DEFERRED_LLM_BACKENDS.items():
        if name == class_name:
            return getattr(importlib.import_module(f"qwen_agent.llm.{module}"), class_name)
    raise AttributeError(f"module 'qwen_agent.llm' has no attribute {name!r}")


def apply() -> None:
    """Contain Qwen-Agent's side effects, importing it now. Safe to call more than once."""
    os.environ["QWEN_AGENT_DEFAULT_WORKSPACE"] = str(cache_dir() / "qwen-agent-workspace")
    _import_qwen_agent_keeping_signal_handlers()
    set_debug(False)


class _ApplyOnFirstImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `qwen_agent` as the other finders do, and loads it through `apply()`."""

    def __init__(self) -> None:
        self._real: importlib.abc.Loader | None = None

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "qwen_agent":
            return None
        sys.meta_path.remove(self)  # once: `apply` imports the package's modules as usual
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self._real, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        assert self._real is not None
        return self._real.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        assert self._real is not None
        module.__loader__ = self._real  # what the package's own code finds there
        os.environ["QWEN_AGENT_DEFAULT_WORKSPACE"] = str(cache_dir() / "qwen-agent-workspace")
        handled = (signal.SIGINT, signal.SIGTERM)
        saved = {sig: signal.getsignal(sig) for sig in handled}
        with _defer_llm_backends():
            self._real.exec_module(module)
            import qwen_agent.agents  # noqa: F401  (installs handlers as a side effect)
            import qwen_agent.tools  # noqa: F401
        set_debug(False)
        # Handlers can be set from the main thread only (Qwen-Agent's own attempt fails quietly
        # elsewhere, as when the resident service imports it in a worker thread).
        if threading.current_thread() is threading.main_thread():
            for sig, handler in saved.items():
                if handler is not None:
                    signal.signal(sig, handler)


def install() -> None:
    """Apply the workarounds when `qwen_agent` is first imported (now, if it already is)."""
    if "qwen_agent" in sys.modules:
        apply()
    elif not any(isinstance(finder, _ApplyOnFirstImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ApplyOnFirstImport())


def set_debug(debug: bool) -> None:
    """Show Qwen-Agent's INFO/DEBUG logs only when debugging."""
    logging.getLogger(QWEN_AGENT_LOGGER).setLevel(logging.DEBUG if debug else logging.ERROR)
