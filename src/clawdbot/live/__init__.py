"""Live state shared by several gateway processes, on Redis (--redis-url).

Each module here implements one of the live-state interfaces of docs/architecture.md (the chat's event log and
running replies, admission, the auth caches and throttles) on Redis, behind the same interface as its in-memory
class; `web/app.py` picks one or the other. `connection.py` is the process's one client and its one pub/sub reader.
Key names put a hash tag (`{…}`) around what groups them (a reply, a conversation, a user), so the keys one
command touches live on one Redis Cluster slot.
"""
