"""How a session answers its MCP servers' requests: the approval policy, the model, the user.

The approval policy decides on a server's sampling request as on a call to a tool named
`<server>-sampling` (so `--approve` lists, `all` and `none` apply); where it would ask and
nobody can be asked (a scheduled job) the request is refused. The completion's length is
capped at `sampling_max_tokens`, and the model answers through a plain `Sampler`. A form
(elicitation) goes to whoever can answer (`Questions`), else it is refused with the reason.
Each step is a `notice` in the running turn.
"""

from __future__ import annotations

from typing import Any

from agent.loop.approval import needs_approval
from agent.tools.mcp_requests import (
    ElicitationRequest,
    Elicited,
    Notify,
    Questions,
    RequestRefused,
    Sampled,
    Sampler,
    SamplingRequest,
)


def sampling_tool_name(server: str) -> str:
    """The name the approval policy knows a server's sampling requests by."""
    return f"{server}-sampling"


class RequestAnswerer:
    """Answers for one session: its approval policy and `questions` (None: nobody can be
    asked, as in a scheduled job), its model (`sampler`, named `model`) and its running
    turn's notices (`notify`)."""

    def __init__(
        self,
        policy: str,
        max_tokens: int,
        model: str,
        sampler: Sampler,
        questions: Questions | None,
        notify: Notify,
    ) -> None:
        self.policy = policy
        self.max_tokens = max_tokens
        self.model = model
        self.sampler = sampler
        self.questions = questions
        self.notify = notify
        self._always: set[str] = set()  # allowed for the rest of the session ("a")

    def sample(self, request: SamplingRequest) -> Sampled:
        """The model's completion, once the policy (or the user) allows it."""
        try:
            self._approve(request)
        except RequestRefused as exc:
            self.notify("sampling", f"server {request.server}: {exc}")
            raise
        tokens = min(request.max_tokens, self.max_tokens)
        capped = (
            f" (it asked for {request.max_tokens}; sampling_max_tokens caps it)"
            if tokens < request.max_tokens
            else ""
        )
        self.notify(
            "sampling",
            f"server {request.server} asked the model for a completion: {tokens} tokens{capped}",
        )
        text = self.sampler(request.messages, tokens, request.system_prompt)
        return Sampled(text=text, model=self.model)

    def _approve(self, request: SamplingRequest) -> None:
        """Return if the request may run; else RequestRefused with why."""
        name = sampling_tool_name(request.server)
        if name in self._always or not needs_approval(self.policy, name):
            return
        if self.questions is None:
            raise RequestRefused(
                "the sampling request was refused: nobody is there to approve it (a scheduled "
                f"job); approve = none, or an approve list without {name}, allows it"
            )
        arguments: dict[str, Any] = {"max_tokens": min(request.max_tokens, self.max_tokens)}
        if request.system_prompt:
            arguments["system_prompt"] = request.system_prompt
        arguments["messages"] = request.messages
        answer = self.questions.approve(name, arguments)  # RequestRefused: nobody to ask
        if answer == "a":
            self._always.add(name)
        elif answer != "y":
            raise RequestRefused("the sampling request was refused: the user did not allow it")

    def elicit(self, request: ElicitationRequest) -> Elicited:
        """The user's answer to the server's form."""
        try:
            if self.questions is None:
                raise RequestRefused(
                    "nobody can answer the form (a scheduled job has no one to ask)"
                )
            return self.questions.elicit(request)
        except RequestRefused as exc:
            self.notify("elicitation", f"server {request.server} asked: {request.message!r}; {exc}")
            raise
