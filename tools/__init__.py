"""Developer tools shipped with ckbd: benchmarks and helpers that the CLI drives (no torch)."""
