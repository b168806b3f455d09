"""Talking to model servers: the Backend interface and its typed stream, the Ollama and OpenAI-compatible
implementations, health, and admission to their slots (the fair queue)."""
