"""An Ollama stand-in: `clawdbot simulate`. See server.py for the routes, engine.py for the timing model."""
