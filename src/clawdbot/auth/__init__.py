"""Who is asking: accounts, sessions, API keys, single sign-on, throttles, and the `clawdbot user` commands."""
