"""clawdbot: a self-hosted streaming gateway and chat platform for Ollama."""

__version__ = "0.1.0"
