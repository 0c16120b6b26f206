"""`agent chat` in a real pseudo-terminal (pexpect), as a user types into it."""

from __future__ import annotations

import time
from pathlib import Path

import pexpect

from tests.clirun import agent_argv, agent_env

PROMPT = "›"


class ChatTerminal:
    """A running `agent chat ARGS`; type lines, wait for text, read what the screen got."""

    def __init__(self, *args: str, home: Path, env: dict[str, str] | None = None) -> None:
        argv = agent_argv("chat", *args)
        # No cursor-position requests: a pseudo-terminal with no terminal behind never answers.
        terminal_env = {"TERM": "dumb", "PROMPT_TOOLKIT_NO_CPR": "1", **(env or {})}
        self.child = pexpect.spawn(
            argv[0],
            argv[1:],
            env=agent_env(home, terminal_env),
            encoding="utf-8",
            timeout=120,
            dimensions=(50, 200),
        )
        self.screen = ""

    def wait_for(self, text: str) -> str:
        """Everything shown up to and including `text`."""
        self.child.expect_exact(text)
        seen = self.child.before + text
        self.screen += seen
        return seen

    def ready(self) -> None:
        """Wait for the input prompt, and for prompt_toolkit to take the keyboard."""
        self.wait_for(PROMPT)
        time.sleep(0.5)

    def say(self, text: str) -> None:
        """Type a message and press Enter."""
        self.child.send(text + "\r")

    def turn(self, text: str, until: str) -> str:
        """At the prompt, type `text` and press Enter; what is shown up to `until`."""
        self.ready()
        self.say(text)
        return self.wait_for(until)

    def press(self, key: str) -> None:
        """Ctrl-`key`."""
        self.child.sendcontrol(key)

    def leave(self) -> int:
        """Ctrl-D at the prompt; the exit status."""
        self.ready()
        self.press("d")
        self.child.expect(pexpect.EOF, timeout=60)
        self.screen += self.child.before
        self.child.close()
        return int(self.child.exitstatus or 0)
