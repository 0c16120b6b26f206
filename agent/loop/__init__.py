"""The agent loop: our Assistant, its tool loop, tool-call parsing and checks, the runner."""
