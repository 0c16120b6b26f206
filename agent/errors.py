"""Exceptions with messages a user can act on.

The command line prints `str(error)` as one line and exits with `error.exit_code`.
"""


class AgentError(Exception):
    """Base class: a problem the user can fix; the message says how."""

    exit_code = 2


class ConfigError(AgentError):
    """A setting, flag or configuration file is invalid."""


class MCPConfigError(ConfigError):
    """`mcp_config.json` cannot be used as it is."""


class MCPServerError(AgentError):
    """An MCP server failed to start or answer (fatal only with --strict-mcp)."""


class MCPReferenceError(AgentError):
    """A prompt or resource the user named (`--prompt-from`, `--attach`, `/prompt`,
    `@server:uri`) does not exist, lacks an argument, or its server could not give it."""


class ModelLoadError(AgentError):
    """The model could not be found, downloaded or loaded."""


class ModelServerError(AgentError):
    """A remote OpenAI-compatible server failed or could not be reached."""


class GenerationError(AgentError):
    """Text generation failed while running."""

    exit_code = 1


class ToolError(AgentError):
    """A tool call failed; the message becomes the error result the model sees."""

    exit_code = 1


class UnknownToolError(AgentError):
    """A tool name given by the user does not exist."""


class PluginError(ConfigError):
    """A custom tool could not be loaded (fatal only with --strict-tools)."""


class ServiceError(AgentError):
    """The resident service could not be used (with `service = required`), stopped during a
    run, or reported an error of its own; `exit_code` is the one the service gave."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code
