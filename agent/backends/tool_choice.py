"""How the tool loop tells a backend whether this model call may, must or must not call a tool.

The loop puts `TOOL_CHOICE_KEY` in the call's generate_cfg. The local backend enforces it with
its grammar (agent/engine/constrained.py); a remote server gets the Hermes text prompt and no
grammar, so `agent_remote` drops the key and the loop's checks do the rest.
"""

from agent.engine.constrained import AUTO, NONE, REQUIRED

__all__ = ["AUTO", "NONE", "REQUIRED", "TOOL_CHOICE_KEY"]

TOOL_CHOICE_KEY = "agent_tool_choice"
