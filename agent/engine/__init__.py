"""The native Qwen3 engine: it knows nothing of Qwen-Agent, the tools or the server.

Its public face:
- `loading.load_local_model(model, ...)` -> `LoadedModel` (the engine, its tokenizer, its
  stop tokens): our int8 engine on CPU (`model.CpuQwen3`), transformers on CUDA;
- `model.CpuQwen3`: `checkout(prompt)` a KV cache holding the longest known prefix (in memory,
  `kv_cache.PrefixCache`, and on disk, `prefix_store.PrefixStore`), `forward(tokens, cache)`
  to prefill or decode one step, `forward_batch` for one step of several sequences, `verify`
  for a decoded token and its drafted ones in one pass, `checkin`;
- `generate`: one model call from prompt text to text pieces (`generate_text`), the one path
  the local LLM class and the server both take, over `generate_token_ids`;
- `lookup`: drafts from the context's n-grams for lookup decoding, and their adaptive length;
- `sampling`, `constrained` (grammar-constrained tool calls and JSON), `tokenizer`;
- `kernels/`: the matmul and attention kernels, chosen per machine through one registry.
"""
