"""The OpenAI-compatible HTTP server over the local model (`agent serve`)."""
