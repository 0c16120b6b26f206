"""Reading Hermes-style tool calls (`<tool_call>{"name": ..., "arguments": ...}</tool_call>`)
out of model text, leniently, for every backend.

Qwen-Agent 0.0.34's parser (NousFnCallPrompt.postprocess_fncall_messages) loses calls a small
model makes: a call without `"name"` is dropped, so the run loops to its call limit with an
empty answer; a literal newline inside a JSON string turns the arguments into raw text; text
after `</tool_call>` is thrown away. `RepairingFnCallPrompt` replaces that one method, and is
installed on every backend by `agent.loop.assistant.build_llm`. What the parser cannot repair is
left for `agent.loop.call_checks` to answer with an error result the model can act on.
"""

from __future__ import annotations

from qwen_agent.llm.fncall_prompts.nous_fncall_prompt import NousFnCallPrompt
from qwen_agent.llm.schema import ASSISTANT, ContentItem, FunctionCall, Message

from agent.loop.call_text import THINK_CLOSE, THINK_OPEN, split_calls


class RepairingFnCallPrompt(NousFnCallPrompt):
    """Qwen-Agent's Hermes prompt, with our lenient parsing of the model's output."""

    def postprocess_fncall_messages(
        self,
        messages: list[Message],
        parallel_function_calls: bool = True,
        function_choice: str = "auto",
        thought_in_content: bool = False,
    ) -> list[Message]:
        """Split each assistant message into text messages and function-call messages."""
        out: list[Message] = []
        call_id = 1
        for message in messages:
            if message.role != ASSISTANT:
                out.append(message)
                continue
            extra = dict(message.extra or {})
            if message.reasoning_content:
                out.append(
                    Message(ASSISTANT, "", reasoning_content=message.reasoning_content, extra=extra)
                )
            texts: list[ContentItem] = []
            for item in message.content if isinstance(message.content, list) else []:
                kind, value = item.get_type_and_value()
                if kind != "text":
                    texts.append(item)
                    continue
                thought, rest = _split_thought(value, thought_in_content)
                thought_in_content = thought_in_content or bool(thought)
                if thought:
                    texts.append(ContentItem(text=thought))
                for segment in split_calls(rest):
                    if segment.call is None:
                        texts.append(ContentItem(text=segment.text))
                        continue
                    if texts:
                        out.append(Message(ASSISTANT, texts, extra=extra))
                        texts = []
                    call = FunctionCall(
                        name=segment.call.name, arguments=segment.call.arguments_text()
                    )
                    out.append(
                        Message(
                            ASSISTANT,
                            [],
                            function_call=call,
                            extra={**extra, "function_id": str(call_id)},
                        )
                    )
                    call_id += 1
            if texts:
                out.append(Message(ASSISTANT, texts, extra=extra))
        return out


def _split_thought(text: str, in_thought: bool) -> tuple[str, str]:
    """(thinking part including `</think>`, the rest); tool calls in thinking are not calls."""
    if THINK_OPEN not in text and not in_thought:
        return "", text
    if THINK_CLOSE not in text:
        return text, ""
    thought, rest = text.rsplit(THINK_CLOSE, 1)
    return thought + THINK_CLOSE, rest
