"""A local, tool-calling agent for Qwen3 built on Qwen-Agent."""

from agent import qwen_agent_compat  # noqa: F401  (must run before anything imports qwen_agent)

__version__ = "0.1.0"
