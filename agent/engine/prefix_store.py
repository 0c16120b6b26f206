"""Keys and values of prompt prefixes kept on disk, so a new process continues from them.

Every `agent run` and every scheduled job is a fresh process whose prompt starts with the same
system prompt and tool schemas (~1,400 tokens with the default tools); this store keeps their
keys and values between processes. An entry is one safetensors file named by a hash of the
model's identity, the engine's numerics and the exact token ids, so a changed model, chat
template, system prompt or tool list is simply a different entry; the least recently used
entries are deleted beyond `max_bytes`. Files are written under a scratch name and renamed
into place, so a reader sees a whole entry or none; eviction runs under a file lock, so
processes starting at once share the directory safely.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from array import array
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

log = logging.getLogger("agent")

SUFFIX = ".safetensors"
LOCK_WAIT_S = 5.0
STALE_SCRATCH_S = 3600.0  # a scratch file this old was left by a writer that died


@dataclass(frozen=True)
class StoredPrefix:
    """One entry's keys and values, [layers, kv_heads, n, head_dim] each."""

    keys: torch.Tensor
    values: torch.Tensor


class PrefixStore:
    """Prompt prefixes of one model and engine format in `directory`, at most `max_bytes`."""

    def __init__(self, directory: Path, identity: str, max_bytes: int) -> None:
        self.directory = directory
        self.identity = identity
        self.max_bytes = max_bytes

    def path_for(self, tokens: list[int]) -> Path:
        """The file that holds (or would hold) the prefix `tokens`."""
        digest = hashlib.sha256(self.identity.encode())
        digest.update(array("i", tokens).tobytes())
        return self.directory / f"{digest.hexdigest()[:32]}{SUFFIX}"

    def load(self, tokens: list[int]) -> StoredPrefix | None:
        """The entry for exactly `tokens`, or None; a damaged entry is deleted and is a miss."""
        path = self.path_for(tokens)
        try:
            with safe_open(str(path), framework="pt") as entry:
                metadata = entry.metadata() or {}
                stored = entry.get_tensor("tokens").tolist()
                if metadata.get("identity") != self.identity or stored != tokens:
                    raise ValueError("entry does not match its name")
                keys, values = entry.get_tensor("keys"), entry.get_tensor("values")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, SafetensorError) as exc:  # truncated, foreign, corrupt
            log.debug("dropping prefix cache entry %s: %s", path.name, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # most recently used
        return StoredPrefix(keys, values)

    def save(self, tokens: list[int], keys: torch.Tensor, values: torch.Tensor) -> None:
        """Keep `tokens` with their keys and values, then drop the least recently used entries
        beyond the budget. A failure to write is logged, never raised: the cache is optional."""
        path = self.path_for(tokens)
        if path.is_file() or keys.nbytes + values.nbytes > self.max_bytes:
            return
        scratch = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
        tensors = {
            "tokens": torch.tensor(tokens, dtype=torch.int32),
            "keys": keys.contiguous(),
            "values": values.contiguous(),
        }
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(scratch), metadata={"identity": self.identity})
            os.replace(scratch, path)
        except OSError as exc:
            log.debug("prompt prefix not saved to %s: %s", self.directory, exc)
            with contextlib.suppress(OSError):
                scratch.unlink()
            return
        self.evict()

    def evict(self) -> None:
        """Delete the least recently used entries until the rest fit in `max_bytes`."""
        try:
            with FileLock(self.directory / ".lock", timeout=LOCK_WAIT_S):
                self._evict_locked()
        except (Timeout, OSError) as exc:  # another process is evicting; it will finish
            log.debug("prefix cache eviction skipped: %s", exc)

    def _evict_locked(self) -> None:
        entries = []
        for file in self.directory.iterdir():
            with contextlib.suppress(FileNotFoundError):
                stat = file.stat()
                if file.suffix == ".tmp" and time.time() - stat.st_mtime > STALE_SCRATCH_S:
                    file.unlink()
                elif file.suffix == SUFFIX:
                    entries.append((stat.st_mtime_ns, stat.st_size, file))
        total = sum(size for _, size, _ in entries)
        for _, size, file in sorted(entries):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                file.unlink()
            total -= size
