"""Build the Qwen-Agent Assistant from settings: backend + tools."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import pluggy
from qwen_agent.agents import Assistant
from qwen_agent.llm.base import BaseChatModel
from qwen_agent.llm.schema import FUNCTION, USER, FunctionCall, Message

from agent.backends.tool_choice import NONE, REQUIRED, TOOL_CHOICE_KEY
from agent.config import CONTEXT_TOKENS, Settings
from agent.history.transcript import NOT_RUN_KEY, trailing_calls
from agent.loop.call_checks import (
    CheckedCall,
    RepeatGuard,
    check_call,
    name_error,
    parameters_schema,
)
from agent.loop.call_parser import RepairingFnCallPrompt
from agent.loop.hook_calls import NOTE_KIND, notes, refusal
from agent.loop.snapshots import message_text
from agent.plugins import plugin_manager
from agent.tools.invoke import ToolOutcome, invoke_tool
from agent.tools.toolset import Toolset

# Qwen-Agent's default max_input_tokens (58,000) is over Qwen3's 32,768-token context and its
# rough count leaves out the tool descriptions: keep room for them and for the answer.
TOOL_SCHEMA_ALLOWANCE = 4_096
STEP_LIMIT_PROMPT = (
    "You have used all {steps} tool steps of this task. Tools are off now: give your final "
    "answer from the tool results above, and say what is still missing, if anything."
)


class ToolListener(Protocol):
    """Told when a tool call starts (its arguments are final) and how it ended."""

    def tool_started(self, name: str, arguments: Any) -> None: ...

    def tool_finished(self, outcome: ToolOutcome) -> None: ...

    def notice(self, kind: str, message: str) -> None: ...


def llm_config(settings: Settings) -> dict[str, Any]:
    """The Qwen-Agent LLM config for the local or remote backend."""
    sampling = settings.sampling()
    max_input = CONTEXT_TOKENS - settings.max_new_tokens - TOOL_SCHEMA_ALLOWANCE
    if settings.model_server:
        from agent.backends.remote import remote_generate_cfg

        generate_cfg = remote_generate_cfg(
            thinking=settings.thinking,
            sampling=sampling,
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
        "disk_cache_mb": settings.disk_cache_mb,
        "lookup_decoding": settings.lookup_decoding,
        "thinking": settings.thinking,
        "constrain": settings.constrain,
        "sampling": sampling,
        "generate_cfg": generate_cfg,
    }


def build_llm(settings: Settings) -> BaseChatModel:
    """Load the model (local) or set up the client (remote)."""
    from qwen_agent.llm import get_chat_model

    # Each registers its model type; only the one used is imported (the remote one imports
    # the OpenAI client, which a local run does without).
    if settings.model_server:
        import agent.backends.remote  # noqa: F401  (registers `agent_remote`)
    else:
        import agent.backends.local  # noqa: F401  (registers `agent_local`)

    return get_chat_model(llm_config(settings))


class AgentAssistant(Assistant):
    """Qwen-Agent's Assistant with our tool loop: calls checked before they run (see
    agent/loop/call_checks.py), identical calls stopped after `max_repeats`, and at most
    `max_steps` rounds of tool calls, after which the model must answer with tools off."""

    def __init__(
        self,
        *args: Any,
        result_limit: int | None = None,
        debug: bool = False,
        max_steps: int,
        max_repeats: int,
        require_tool: bool = False,
        hooks: pluggy.PluginManager | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.hooks = hooks or plugin_manager()
        if hasattr(self.llm, "fncall_prompt"):
            # Qwen-Agent's own parser drops calls a small model makes (agent/loop/call_parser.py).
            self.llm.fncall_prompt = RepairingFnCallPrompt()
        self.tool_listener: ToolListener | None = None
        self.run_id = ""  # the run in progress, as the hooks are told (set by the runner)
        self.result_limit = result_limit
        self.debug = debug
        self.max_steps = max_steps
        self.max_repeats = max_repeats
        self.require_tool = require_tool
        self.context_budget: int | None = None  # tokens the messages may take (older results cut)

    def _run(
        self, messages: list[Message], lang: str = "en", **kwargs: Any
    ) -> Iterator[list[Message]]:
        # Replaces FnCallAgent._run, whose loop ends silently after 20 calls (DESIGN.md).
        messages = self._prepend_knowledge_prompt(messages=messages, lang=lang, **kwargs)
        repeats = RepeatGuard(self.max_repeats)
        response: list[Message] = []
        yield from self._run_pending(messages, response, repeats)
        for step in range(self.max_steps + 1):
            last_step = step == self.max_steps
            if last_step:
                messages.append(Message(USER, STEP_LIMIT_PROMPT.format(steps=self.max_steps)))
                self.notify(
                    "step_limit",
                    f"{self.max_steps} tool steps used; the model must answer now, tools off",
                )
            self._keep_within_budget(messages)
            output: list[Message] = []
            for output in self._call_llm(
                messages=messages,
                functions=[tool.function for tool in self.function_map.values()],
                extra_generate_cfg=self._step_cfg(step, last_step, lang, kwargs),
            ):
                if last_step:
                    # Calls are not run now: drop them, and yield even an empty output so a
                    # partial `<tool_call` shown earlier is withdrawn, never finalized as text.
                    output = [message for message in output if not message.function_call]
                    yield response + output
                elif output:
                    yield response + output
            response.extend(output)
            messages.extend(output)
            calls = [message for message in output if message.function_call]
            if last_step and not any(message_text(m.model_dump()) for m in output):
                self.notify("no_answer", f"no final answer after {self.max_steps} tool steps")
            if not calls:
                break
            for message in calls:
                result, hook_notes = self._run_call(message.function_call, repeats)
                reply = _result_message(message, result)
                messages.append(reply)
                response.append(reply)
                yield response
                for note in hook_notes:  # after the result is shown
                    self.notify(NOTE_KIND, note)
        yield response

    def _run_pending(
        self, messages: list[Message], response: list[Message], repeats: RepeatGuard
    ) -> Iterator[list[Message]]:
        """Run the calls `messages` end with (a resumed run's, made before it stopped) as if
        the model had just made them; one whose `extra` says `not_run` gets that as its error."""
        pending = trailing_calls(messages)
        if not pending:
            return
        calls = messages[-pending:]
        response.extend(calls)
        yield response
        for message in calls:
            refused = (message.extra or {}).get(NOT_RUN_KEY)
            result, hook_notes = (
                (self._refuse_call(message.function_call, str(refused)), [])
                if refused
                else self._run_call(message.function_call, repeats)
            )
            reply = _result_message(message, result)
            messages.append(reply)
            response.append(reply)
            yield response
            for note in hook_notes:  # after the result is shown
                self.notify(NOTE_KIND, note)

    def _refuse_call(self, call: FunctionCall, reason: str) -> str:
        """A call shown and answered with `Error: reason`, never run."""
        if self.tool_listener:
            self.tool_listener.tool_started(call.name, call.arguments)
            self.tool_listener.tool_finished(ToolOutcome(f"Error: {reason}", False, 0.0))
        return f"Error: {reason}"

    def call_tool(self, name: str, arguments: str, repeats: RepeatGuard) -> str:
        """One tool call run as the loop runs it (checks, hooks, the tool, the result limit),
        with no model: how a recorded run is replayed. The outcome goes to `tool_listener`."""
        content, hook_notes = self._run_call(FunctionCall(name=name, arguments=arguments), repeats)
        for note in hook_notes:
            self.notify(NOTE_KIND, note)
        return content

    def _step_cfg(
        self, step: int, last_step: bool, lang: str, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        cfg: dict[str, Any] = {"lang": lang}
        if kwargs.get("seed") is not None:
            cfg["seed"] = kwargs["seed"]
        if last_step:
            cfg[TOOL_CHOICE_KEY] = NONE
        elif step == 0 and self.require_tool:
            cfg[TOOL_CHOICE_KEY] = REQUIRED
        return cfg

    def _keep_within_budget(self, messages: list[Message]) -> None:
        """Cut older tool results when the run's messages pass the context budget."""
        if self.context_budget is None:
            return
        from agent.loop.compaction import cut_old_results

        if cut := cut_old_results(messages, self.context_budget):
            self.notify(
                "compacted",
                f"{cut} older tool result{'s' if cut > 1 else ''} cut to stay within the context "
                "window (the whole results are in the run history)",
            )

    def notify(self, kind: str, message: str) -> None:
        """A `notice` event in the running turn (from any thread)."""
        if self.tool_listener:
            self.tool_listener.notice(kind, message)

    def _run_call(self, call: FunctionCall, repeats: RepeatGuard) -> tuple[str, list[str]]:
        """Check the call, ask the hooks, then run it; a refused call is an error result the
        model reads. The result, and the after_tool_call hooks' lines for the user."""
        if self.tool_listener:
            self.tool_listener.tool_started(call.name, call.arguments)
        checked = self._check(call, repeats)
        arguments = checked.arguments
        refused = None
        if arguments is not None:
            refused = refusal(self.hooks, call.name, arguments, self.run_id)
        if arguments is None:
            outcome = ToolOutcome(checked.error, False, 0.0)
        elif refused:
            outcome = ToolOutcome(f"Error: {refused}", False, 0.0)
        else:
            tool = self.function_map[call.name]
            limit, debug = self.result_limit, self.debug
            outcome = invoke_tool(tool, arguments, limit=limit, debug=debug)
        if self.tool_listener:
            self.tool_listener.tool_finished(outcome)
        if arguments is None or refused:
            return outcome.content, []
        said = notes(
            self.hooks,
            "after_tool_call",
            name=call.name,
            arguments=arguments,
            result=outcome.content,
            ok=outcome.ok,
            duration_s=round(outcome.duration_s, 3),
            run_id=self.run_id,
        )
        return outcome.content, said

    def _check(self, call: FunctionCall, repeats: RepeatGuard) -> CheckedCall:
        if error := name_error(call.name, list(self.function_map)):
            return CheckedCall(error=error)
        schema = parameters_schema(self.function_map[call.name])
        checked = check_call(call.name, call.arguments, schema)
        if checked.arguments is None:
            return checked
        error = repeats.refuse(call.name, checked.arguments)
        return CheckedCall(error=error) if error else checked


def _result_message(call: Message, result: str) -> Message:
    """The `function` message answering the tool call `call`."""
    return Message(
        FUNCTION,
        result,
        name=call.function_call.name,
        extra={"function_id": (call.extra or {}).get("function_id", "1")},
    )


def build_assistant(
    settings: Settings,
    llm: BaseChatModel,
    toolset: Toolset,
    hooks: pluggy.PluginManager | None = None,
) -> AgentAssistant:
    """The Assistant wired to `llm` and every tool in `toolset` (and the plugin `hooks`)."""
    return AgentAssistant(
        llm=llm,
        function_list=toolset.tools,
        system_message=settings.system_prompt,
        result_limit=settings.tool_result_limit,
        debug=settings.debug,
        max_steps=settings.max_steps,
        max_repeats=settings.max_repeats,
        require_tool=settings.require_tool,
        hooks=hooks,
    )
