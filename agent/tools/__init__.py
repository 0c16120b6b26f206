"""Tools the assistant gets: the toolset, plugin tools, MCP servers, the code interpreter."""
