"""Training the tiny Qwen3 on scripted transcripts, on the CPU, in a few minutes.

The forward pass is Qwen3's (RMSNorm, q/k norms, RoPE, grouped-query attention, SwiGLU, tied
embeddings), written over the same parameter names as `Qwen3ForCausalLM` so the result loads
there unchanged. Two things make it cheap, and neither changes the model it trains:
- only the embedding rows of tokens the transcripts use are trained; every other row stays zero,
  so its logit is exactly 0 and the full-vocabulary softmax is computed exactly from the used
  logits plus `log(unused rows)`;
- a batch shares its prompt's common prefix (the system prompt with the tool schemas), which is
  run once and attended to by every row.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import Qwen3ForCausalLM

from agent.testing.transcripts import (
    IM_END_ID,
    Example,
    encode_transcript,
    random_runs,
    value_token_ids,
)

USED_IDS_KEY = "used_token_ids"


class TinyQwen3Trainer:
    """Qwen3 parameters (used embedding rows only) and the forward pass that trains them."""

    def __init__(self, model: Qwen3ForCausalLM, used_ids: Sequence[int]) -> None:
        config = model.config
        self.config = config
        self.used = torch.tensor(sorted(set(used_ids)))
        self.local = torch.full((config.vocab_size,), -1, dtype=torch.long)
        self.local[self.used] = torch.arange(len(self.used))
        state = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
        state["model.embed_tokens.weight"] = state["model.embed_tokens.weight"][self.used]
        state.pop("lm_head.weight", None)
        self.params = {k: v.requires_grad_() for k, v in state.items()}
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads or self.heads)
        self.head_dim = int(config.head_dim or config.hidden_size // self.heads)
        theta = float(dict(config.rope_parameters or {})["rope_theta"])
        dims = torch.arange(0, self.head_dim, 2).float() / self.head_dim
        self.inv_freq = 1.0 / theta**dims

    def _p(self, name: str) -> torch.Tensor:
        return self.params[name]

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.config.rms_norm_eps) * weight

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        angles = torch.cat([freqs, freqs], dim=-1)[:, None]  # (length, 1 for the heads, dim)
        return angles.cos(), angles.sin()

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def forward(
        self, ids: torch.Tensor, start: int = 0, past: list[tuple] | None = None
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Final hidden states of `ids` (batch, length) at positions `start`..., attending to
        `past` keys/values (batch 1, shared by every row) first; and this call's keys/values."""
        c = self.config
        batch, length = ids.shape
        heads, kv_heads, head_dim = self.heads, self.kv_heads, self.head_dim
        hidden = F.embedding(self.local[ids], self._p("model.embed_tokens.weight"))
        cos, sin = self._rope(torch.arange(start, start + length))
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        if start:
            causal = torch.cat([torch.ones(length, start, dtype=torch.bool), causal], dim=1)
        present = []
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            x = self._rms(hidden, self._p(p + "input_layernorm.weight"))
            q = (x @ self._p(p + "self_attn.q_proj.weight").T).view(batch, length, heads, head_dim)
            k = (x @ self._p(p + "self_attn.k_proj.weight").T).view(
                batch, length, kv_heads, head_dim
            )
            v = (x @ self._p(p + "self_attn.v_proj.weight").T).view(
                batch, length, kv_heads, head_dim
            )
            q = self._rotate(self._rms(q, self._p(p + "self_attn.q_norm.weight")), cos, sin)
            k = self._rotate(self._rms(k, self._p(p + "self_attn.k_norm.weight")), cos, sin)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            present.append((k, v))
            if past:
                past_k, past_v = past[i]
                k = torch.cat([past_k.expand(batch, -1, -1, -1), k], dim=2)
                v = torch.cat([past_v.expand(batch, -1, -1, -1), v], dim=2)
            k = k.repeat_interleave(heads // kv_heads, dim=1)
            v = v.repeat_interleave(heads // kv_heads, dim=1)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=causal)
            attended = attended.transpose(1, 2).reshape(batch, length, heads * head_dim)
            hidden = hidden + attended @ self._p(p + "self_attn.o_proj.weight").T
            x = self._rms(hidden, self._p(p + "post_attention_layernorm.weight"))
            gate = F.silu(x @ self._p(p + "mlp.gate_proj.weight").T)
            up = x @ self._p(p + "mlp.up_proj.weight").T
            hidden = hidden + (gate * up) @ self._p(p + "mlp.down_proj.weight").T
        return self._rms(hidden, self._p("model.norm.weight")), present

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over the used tokens, plus one column standing for every unused token
        (logit 0 each), weighted so that a softmax over these columns is the full one."""
        used = hidden @ self._p("model.embed_tokens.weight").T
        unused = math.log(self.config.vocab_size - len(self.used))
        return torch.cat([used, torch.full_like(used[..., :1], unused)], dim=-1)

    def batch_loss(self, batch: Sequence[Example]) -> tuple[torch.Tensor, list[bool]]:
        """Mean cross-entropy over the targets of `batch`, and for each row whether it is
        predicted exactly: every target token the argmax, ahead of the unused tokens too."""
        prefix_len = _common_prefix_length([ex.prompt for ex in batch])
        _, past = self.forward(torch.tensor([batch[0].prompt[:prefix_len]]))
        rows = [list(ex.prompt[prefix_len:]) + list(ex.target) for ex in batch]
        width = max(map(len, rows))
        ids = torch.tensor([row + [IM_END_ID] * (width - len(row)) for row in rows])
        hidden, _ = self.forward(ids, start=prefix_len, past=past)
        row_of: list[int] = []
        column: list[int] = []
        targets: list[int] = []
        for r, ex in enumerate(batch):
            first = len(ex.prompt) - prefix_len - 1  # the position that predicts target[0]
            row_of += [r] * len(ex.target)
            column += range(first, first + len(ex.target))
            targets += [int(self.local[token]) for token in ex.target]
        logits = self.logits(hidden[row_of, column])
        target = torch.tensor(targets)
        wrong = (logits.argmax(-1) != target).long()
        wrong_per_row = torch.zeros(len(batch), dtype=torch.long)
        wrong_per_row.index_add_(0, torch.tensor(row_of), wrong)
        return F.cross_entropy(logits, target), (wrong_per_row == 0).tolist()

    def save(self, path: Path) -> None:
        """The weights (used embedding rows only) in bf16, and the used token ids: ~1 MB."""
        tensors = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in self.params.items()}
        tensors[USED_IDS_KEY] = self.used.to(torch.int32)
        save_file(tensors, path)

    @classmethod
    def load(cls, model: Qwen3ForCausalLM, path: Path) -> TinyQwen3Trainer:
        """A trainer holding the weights `save` wrote, shaped by `model`'s config."""
        tensors = load_file(path)
        trainer = cls(model, tensors.pop(USED_IDS_KEY).tolist())
        if tensors.keys() != trainer.params.keys():
            raise ValueError(f"{path} does not hold the weights of this model's shape")
        trainer.params = {k: v.float().requires_grad_() for k, v in tensors.items()}
        return trainer

    def export(self, model: Qwen3ForCausalLM) -> Qwen3ForCausalLM:
        """`model` with the trained weights (unused embedding rows zero), in its own dtype."""
        state = {k: v.detach() for k, v in self.params.items()}
        embed = torch.zeros(self.config.vocab_size, self.config.hidden_size)
        embed[self.used] = state["model.embed_tokens.weight"]
        state["model.embed_tokens.weight"] = embed
        dtype = next(model.parameters()).dtype
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
        model.tie_weights()
        return model


def _common_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    shortest = min(map(len, prompts))
    for i in range(shortest):
        if any(p[i] != prompts[0][i] for p in prompts):
            return i
    return shortest - 1  # keep at least one prompt token in every row


def train(
    trainer: TinyQwen3Trainer,
    batches: Callable[[random.Random], Sequence[Example]],
    steps: int,
    seed: int,
    lr: float = 1e-2,
    log: Callable[[str], None] | None = None,
) -> None:
    """AdamW over `steps` batches drawn from `batches`: warm-up, a constant rate, and a linear
    decay over the last quarter."""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(trainer.params.values(), lr=lr, weight_decay=0.0)
    warmup, decay = max(1, steps // 20), max(1, steps // 4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup, (steps - s) / decay)
    )
    for step in range(steps):
        loss, exact = trainer.batch_loss(batches(rng))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.params.values(), 1.0)
        optimizer.step()
        schedule.step()
        if log and (step % 25 == 0 or step == steps - 1):
            log(f"step {step}: loss {loss.item():.4f}, exact {sum(exact)}/{len(exact)}")


# --- the recipe --------------------------------------------------------------------------------

TRAINING_TRANSCRIPTS = 1000
SHORT_STEPS = 1500  # rows without the system prompt: learning to call and to copy, cheaply
SHORT_BATCH = 32
FULL_STEPS = 500  # then rows with the whole prompt `agent run` sends
FULL_BATCH = 16
LEARNING_RATE = 1e-2


@dataclass
class TrainingData:
    """Encoded model calls, grouped by the local time zone in the tool schemas (one system
    prompt per group, so a full batch shares its prefix), and the same without system prompt."""

    full: dict[str, list[Example]]
    short: list[Example]

    def short_batch(self, rng: random.Random) -> list[Example]:
        """Rows without system prompt."""
        return rng.sample(self.short, SHORT_BATCH)

    def full_batch(self, rng: random.Random) -> list[Example]:
        """Rows with the same whole prompt prefix."""
        return rng.sample(self.full[rng.choice(sorted(self.full))], FULL_BATCH)

    def token_ids(self) -> set[int]:
        """Every token id the examples use."""
        return {t for group in self.full.values() for ex in group for t in ex.prompt + ex.target}


def training_data(tokenizer: Any, count: int, seed: int) -> TrainingData:
    """`count` random transcripts, encoded as `agent run` would prompt for them."""
    full: dict[str, list[Example]] = {}
    for zone, transcript in random_runs(count, seed):
        full.setdefault(zone, []).extend(encode_transcript(transcript, tokenizer, zone))
    first_user = tuple(tokenizer("<|im_end|>\n<|im_start|>user\n")["input_ids"])
    short = [_without_system_prompt(ex, first_user) for group in full.values() for ex in group]
    return TrainingData(full, short)


def _without_system_prompt(example: Example, first_user: tuple[int, ...]) -> Example:
    prompt = example.prompt
    for i in range(len(prompt)):
        if prompt[i : i + len(first_user)] == first_user:
            return Example(prompt[:1] + prompt[i + 2 :], example.target)  # <|im_start|>user...
    raise ValueError("the prompt has no system message")


def train_tiny_model(
    model: Qwen3ForCausalLM, tokenizer: Any, seed: int, log: Callable[[str], None] | None = None
) -> TinyQwen3Trainer:
    """`model`'s weights (random) trained on the scripted transcripts; deterministic per seed
    and thread count."""
    data = training_data(tokenizer, TRAINING_TRANSCRIPTS, seed)
    used = data.token_ids() | value_token_ids(tokenizer)
    trainer = TinyQwen3Trainer(model, sorted(used))  # trains a float32 copy
    train(trainer, data.short_batch, SHORT_STEPS, seed, LEARNING_RATE, log)
    train(trainer, data.full_batch, FULL_STEPS, seed + 1, LEARNING_RATE / 2, log)
    return trainer
