"""A local, tool-calling agent for Qwen3 built on Qwen-Agent."""

__version__ = "0.1.0"
