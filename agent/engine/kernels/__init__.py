"""The CPU engine's kernels: every matmul kernel by name in one registry
(`choice.MATMUL_KERNELS`), our compiled ones (`compiled`), and the self-test that picks, per
machine, which of them each band of rows runs on (`choice.choose_kernels`)."""
