"""Test support: a real Qwen3 tokenizer and chat template, and a tiny Qwen3 checkpoint to load."""
