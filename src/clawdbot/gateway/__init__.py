"""The raw /api/* and /v1/* relay: requests pass to the backend and its bytes come back as they arrive."""
