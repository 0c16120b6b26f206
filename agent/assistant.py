"""Build the Qwen-Agent Assistant from settings: backend + tools."""

from __future__ import annotations

from typing import Any, Protocol

from qwen_agent.agents import Assistant
from qwen_agent.llm.base import BaseChatModel

from agent.backends.local import CONTEXT_TOKENS
from agent.config import Settings
from agent.tool_calls import ToolOutcome, invoke_tool
from agent.toolset import Toolset

# Qwen-Agent's default max_input_tokens (58,000) is over Qwen3's 32,768-token context and its
# rough count leaves out the tool descriptions: keep room for them and for the answer.
TOOL_SCHEMA_ALLOWANCE = 4_096


class ToolListener(Protocol):
    """Told when a tool call starts (its arguments are final) and how it ended."""

    def tool_started(self, name: str, arguments: Any) -> None: ...

    def tool_finished(self, outcome: ToolOutcome) -> None: ...


def llm_config(settings: Settings) -> dict[str, Any]:
    """The Qwen-Agent LLM config for the local or remote backend."""
    sampling = settings.sampling()
    max_input = CONTEXT_TOKENS - settings.max_new_tokens - TOOL_SCHEMA_ALLOWANCE
    if settings.model_server:
        from agent.backends.remote import remote_generate_cfg

        generate_cfg = remote_generate_cfg(
            thinking=settings.thinking,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            min_p=sampling.min_p,
            presence_penalty=settings.presence_penalty,
            max_new_tokens=settings.max_new_tokens,
            seed=settings.seed,
        )
        generate_cfg["max_input_tokens"] = max_input
        return {
            "model_type": "agent_remote",
            "model": settings.model,
            "model_server": settings.model_server,
            "api_key": settings.api_key or "EMPTY",
            "generate_cfg": generate_cfg,
        }
    generate_cfg = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "min_p": sampling.min_p,
        "presence_penalty": settings.presence_penalty,
        "max_new_tokens": settings.max_new_tokens,
        "max_input_tokens": max_input,
    }
    if settings.seed is not None:
        generate_cfg["seed"] = settings.seed
    return {
        "model_type": "agent_local",
        "model": settings.model,
        "device": settings.device,
        "threads": settings.threads,
        "engine": settings.engine,
        "kv_cache_mb": settings.kv_cache_mb,
        "thinking": settings.thinking,
        "generate_cfg": generate_cfg,
    }


def build_llm(settings: Settings) -> BaseChatModel:
    """Load the model (local) or set up the client (remote)."""
    from qwen_agent.llm import get_chat_model

    import agent.backends.local  # noqa: F401  (registers `agent_local`)
    import agent.backends.remote  # noqa: F401  (registers `agent_remote`)

    return get_chat_model(llm_config(settings))


class AgentAssistant(Assistant):
    """Qwen-Agent's Assistant, with tool calls that report their start and outcome."""

    def __init__(
        self, *args: Any, result_limit: int | None = None, debug: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.tool_listener: ToolListener | None = None
        self.result_limit = result_limit
        self.debug = debug

    def _call_tool(self, tool_name: str, tool_args: Any = "{}", **kwargs: Any) -> str:
        if self.tool_listener:
            self.tool_listener.tool_started(tool_name, tool_args)
        tool = self.function_map.get(tool_name)
        if tool is None:
            names = ", ".join(self.function_map) or "none"
            outcome = ToolOutcome(
                f"Error: there is no tool named {tool_name!r}; tools: {names}", False, 0.0
            )
        else:
            outcome = invoke_tool(tool, tool_args, limit=self.result_limit, debug=self.debug)
        if self.tool_listener:
            self.tool_listener.tool_finished(outcome)
        return outcome.content


def build_assistant(settings: Settings, llm: BaseChatModel, toolset: Toolset) -> AgentAssistant:
    """The Assistant wired to `llm` and every tool in `toolset`."""
    return AgentAssistant(
        llm=llm,
        function_list=toolset.tools,
        system_message=settings.system_prompt,
        result_limit=settings.tool_result_limit,
        debug=settings.debug,
    )
