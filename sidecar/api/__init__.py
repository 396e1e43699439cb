"""HTTP handlers: translate requests into a pipeline context and pipeline results back."""
