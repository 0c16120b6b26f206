"""A local, tool-calling agent for Qwen3 built on Qwen-Agent."""

from agent import qwen_agent_compat

qwen_agent_compat.install()  # before anything imports qwen_agent

__version__ = "0.1.0"
