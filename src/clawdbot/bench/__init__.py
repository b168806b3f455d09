"""`clawdbot bench`: a load generator that measures the server, not itself (see runner.py)."""
