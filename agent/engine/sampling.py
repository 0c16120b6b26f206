"""Choosing the next token with Qwen3's sampling: penalties, logit bias, temperature, top-k,
top-p, min-p; the log-probabilities of the distribution drawn from; and the token at a drafted
place, by speculative sampling's rule (the same distribution)."""

from __future__ import annotations

import torch

from agent.config import SamplingParams

__all__ = [
    "SamplingParams",
    "accept_or_resample",
    "adjusted_logits",
    "sample_adjusted",
    "sample_next_token",
    "sampling_distribution",
    "token_logprobs",
    "verify_drafted",
]


def adjusted_logits(
    logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor
) -> torch.Tensor:
    """`logits` as float with the presence and frequency penalties and the logit bias applied;
    `seen` counts how often each token was generated already (a boolean mask counts once)."""
    logits = logits.float()
    if params.presence_penalty:
        logits = logits - params.presence_penalty * (seen > 0).float()
    if params.frequency_penalty:
        logits = logits - params.frequency_penalty * seen.float()
    if params.logit_bias:
        ids = torch.tensor([token for token, _ in params.logit_bias])
        bias = torch.tensor([value for _, value in params.logit_bias])
        logits = logits.index_add(0, ids, bias)
    return logits


def token_logprobs(adjusted: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Log-probabilities over the vocabulary of the distribution the sampler draws from, before
    its top-k / top-p / min-p cut: `adjusted` logits (`adjusted_logits`) over the temperature
    (1 when greedy)."""
    temperature = params.temperature if params.temperature > 0 else 1.0
    return torch.log_softmax(adjusted / temperature, dim=-1)


def sample_next_token(
    logits: torch.Tensor,
    params: SamplingParams,
    seen: torch.Tensor,
    generator: torch.Generator,
) -> int:
    """Pick the next token id from 1-D `logits` (-inf for tokens that may not come); `seen`
    counts how often each token was generated already (a boolean mask counts once)."""
    return sample_adjusted(adjusted_logits(logits, params, seen), params, generator)


def sample_adjusted(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator
) -> int:
    """Pick the next token id from logits the penalties and bias were already applied to."""
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    candidates, probs = sampling_distribution(logits, params)
    return int(candidates[torch.multinomial(probs, 1, generator=generator)])


def sampling_distribution(
    logits: torch.Tensor, params: SamplingParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """What `sample_adjusted` draws from (temperature > 0): candidate token ids, likeliest
    first, and their probabilities after the top-k, min-p and top-p cuts (0 for the cut ones)."""
    candidates = torch.arange(logits.numel())
    if 0 < params.top_k < logits.numel():
        logits, candidates = torch.topk(logits, params.top_k)
    probs = torch.softmax(logits / params.temperature, dim=-1)
    probs, order = torch.sort(probs, descending=True)
    candidates = candidates[order]
    keep = torch.ones_like(probs, dtype=torch.bool)
    if params.min_p > 0:
        keep &= probs >= params.min_p * probs[0]
    if params.top_p < 1.0:
        keep &= (torch.cumsum(probs, dim=-1) - probs) < params.top_p
    keep[0] = True
    probs = torch.where(keep, probs, torch.zeros_like(probs))
    return candidates, probs / probs.sum()


def verify_drafted(
    logits: torch.Tensor, params: SamplingParams, draft: int, generator: torch.Generator
) -> int:
    """The token at a place a draft proposed `draft` for, distributed exactly as
    `sample_adjusted`'s: greedy, the likeliest; else `accept_or_resample`."""
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    candidates, probs = sampling_distribution(logits, params)
    return accept_or_resample(candidates, probs, draft, generator)


def accept_or_resample(
    candidates: torch.Tensor, probs: torch.Tensor, draft: int, generator: torch.Generator
) -> int:
    """Speculative sampling's rule for a draft that proposes one token for sure: `draft` is
    taken with its probability p(draft), else a token is drawn from p without it,
    renormalised; the result is distributed as p (taken: p(d); any other x: (1 - p(d)) *
    p(x) / (1 - p(d)))."""
    drafted = candidates == draft
    chance = float(probs[drafted].sum())
    if chance > 0 and float(torch.rand((), generator=generator)) < chance:
        return draft
    rest = probs.masked_fill(drafted, 0.0)
    return int(candidates[torch.multinomial(rest / rest.sum(), 1, generator=generator)])
