"""The plumbing of lesson 05: flags, checkpoints, bookkeeping, reports, figures and the attention explorer."""
