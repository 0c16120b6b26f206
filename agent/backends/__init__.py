"""Model backends, each registered with Qwen-Agent as an LLM class."""
