"""The resident per-user service: a warm model, MCP servers and prefix cache behind a Unix
socket (`server`), the light client the commands use (`client`), and what they say
(`protocol`)."""
