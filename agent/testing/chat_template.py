"""Our Qwen3 chat template (ChatML), written to render what Qwen3's official template renders.

It takes either shape of a conversation: the one Qwen-Agent's `NousFnCallPrompt` produces (tools
already written into the system text, tool calls and results as plain text), or the structured
one (`tools=`, assistant `tool_calls`, `tool` messages, `reasoning_content`). Thinking is kept
only for assistant turns after the last real user query; `enable_thinking=False` closes an empty
think block after the generation prompt.
"""

QWEN3_CHAT_TEMPLATE = r"""
{%- macro tool_call_text(call) -%}
    {%- set fn = call.function if call.function else call -%}
    {{- '<tool_call>\n{"name": "' + fn.name + '", "arguments": ' -}}
    {{- fn.arguments if fn.arguments is string else fn.arguments | tojson -}}
    {{- '}\n</tool_call>' -}}
{%- endmacro -%}

{%- set has_system = messages and messages[0].role == 'system' -%}
{%- if tools -%}
    {{- '<|im_start|>system\n' -}}
    {%- if has_system -%}
        {{- messages[0].content + '\n\n' -}}
    {%- endif -%}
    {{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' -}}
    {{- 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' -}}
    {%- for tool in tools -%}
        {{- '\n' + tool | tojson -}}
    {%- endfor -%}
    {{- '\n</tools>\n\nFor each function call, return a json object with function name and ' -}}
    {{- 'arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n' -}}
    {{- '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' -}}
{%- elif has_system -%}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' -}}
{%- endif -%}

{#- The last real user query: a user turn that is not only a tool response. -#}
{%- set ns = namespace(last_query=messages | length - 1) -%}
{%- for message in messages -%}
    {%- if message.role == 'user' and message.content is string
        and not (message.content.startswith('<tool_response>')
                 and message.content.endswith('</tool_response>')) -%}
        {%- set ns.last_query = loop.index0 -%}
    {%- endif -%}
{%- endfor -%}

{%- for message in messages -%}
    {%- set content = message.content if message.content is string else '' -%}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) -%}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>\n' -}}
    {%- elif message.role == 'assistant' -%}
        {%- set thinking = '' -%}
        {%- if message.reasoning_content is string -%}
            {%- set thinking = message.reasoning_content -%}
        {%- elif '</think>' in content -%}
            {%- set thinking = content.split('</think>')[0].rstrip('\n').split('<think>')[-1] -%}
            {%- set thinking = thinking.lstrip('\n') -%}
            {%- set content = content.split('</think>')[-1].lstrip('\n') -%}
        {%- endif -%}
        {{- '<|im_start|>assistant\n' -}}
        {%- if loop.index0 > ns.last_query and (loop.last or thinking) -%}
            {{- '<think>\n' + thinking.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') -}}
        {%- else -%}
            {{- content -}}
        {%- endif -%}
        {%- for call in message.tool_calls or [] -%}
            {%- if content or not loop.first -%}
                {{- '\n' -}}
            {%- endif -%}
            {{- tool_call_text(call) -}}
        {%- endfor -%}
        {{- '<|im_end|>\n' -}}
    {%- elif message.role == 'tool' -%}
        {%- if loop.first or loop.previtem.role != 'tool' -%}
            {{- '<|im_start|>user' -}}
        {%- endif -%}
        {{- '\n<tool_response>\n' + content + '\n</tool_response>' -}}
        {%- if loop.last or loop.nextitem.role != 'tool' -%}
            {{- '<|im_end|>\n' -}}
        {%- endif -%}
    {%- endif -%}
{%- endfor -%}

{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
    {%- if enable_thinking is defined and enable_thinking is false -%}
        {{- '<think>\n\n</think>\n\n' -}}
    {%- endif -%}
{%- endif -%}
""".strip()
"""The Jinja chat template saved into the tiny checkpoint's tokenizer_config.json."""
