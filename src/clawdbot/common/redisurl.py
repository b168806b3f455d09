"""The Redis URLs the gateway takes (--redis-url), checked when the settings are read, and what one may say beyond
redis-py's own parsing: the TLS settings of a rediss+cluster:// URL, which live/connection.py hands to the cluster
client."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", *CLUSTER_SCHEMES)
# What a rediss+cluster:// URL's query may set: redis-py's names for them, as in a rediss:// URL.
TLS_QUERY = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")


def cluster_tls(query: str) -> dict[str, Any]:
    """The TLS settings a rediss+cluster:// URL's query may carry (as a rediss:// URL's do, which redis-py reads
    itself): a private CA's certificate above all, and a client certificate where the nodes ask for one."""
    options: dict[str, Any] = {}
    for name, values in parse_qs(query, keep_blank_values=True).items():
        if name not in TLS_QUERY:
            raise ValueError(f"{name} is not a setting of a Redis Cluster URL: {', '.join(TLS_QUERY)} are")
        value = values[-1]
        options[name] = value.lower() not in ("false", "no", "0") if name == "ssl_check_hostname" else value
    return options


def checked_redis_url(value: str) -> str:
    """`value`, if the gateway can use it; else a ValueError saying what it should look like."""
    if not value.startswith(SCHEMES):
        raise ValueError(
            "must be redis://HOST:PORT/DB, rediss://HOST:PORT/DB, unix:///PATH, "
            "redis+sentinel://HOST:PORT[,HOST:PORT…]/SERVICE[/DB] or redis+cluster://HOST:PORT[,HOST:PORT…]"
        )
    if value.startswith(CLUSTER_SCHEMES):
        parsed = urlsplit(value)
        if parsed.path.strip("/") not in ("", "0"):
            raise ValueError("a Redis Cluster has one database, 0: leave the path out of redis+cluster://HOST:PORT,…")
        cluster_tls(parsed.query)  # a setting it does not know is said now, not at the first command
    return value
