"""How the tool loop tells a backend whether this model call may, must or must not call a tool.

The loop puts `TOOL_CHOICE_KEY` in the call's generate_cfg. The local backend enforces it with
its grammar (agent/backends/constrained.py); a remote server gets the Hermes text prompt and no
grammar, so `agent_remote` drops the key and the loop's checks do the rest.
"""

TOOL_CHOICE_KEY = "agent_tool_choice"
AUTO, REQUIRED, NONE = "auto", "required", "none"
