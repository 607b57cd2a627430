"""Per-channel window path: windows -> embeddings -> probabilities -> decisions; no I/O."""
