"""Conversations as a service: turns, generations, the reply event log and its fan-out, context planning, search,
versions, titles and exports."""
