"""llm-sidecar: an LLM gateway that runs beside the application that calls it."""

__version__ = "0.1.0"
