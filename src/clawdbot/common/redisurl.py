"""The Redis URLs the gateway takes (--redis-url), checked when the settings are read, and what one may say beyond
redis-py's own parsing: the TLS settings of a rediss+cluster:// or rediss+sentinel:// URL, which live/connection.py
hands to the cluster or Sentinel client."""

from __future__ import annotations

from typing import Any
from urllib.parse import SplitResult, parse_qs, urlsplit

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
SCHEMES = ("redis://", "rediss://", "unix://", *SENTINEL_SCHEMES, *CLUSTER_SCHEMES)
# What a rediss+cluster:// or rediss+sentinel:// URL's query may set: redis-py's names for them, as in a rediss://
# URL.
TLS_QUERY = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")


def tls_settings(parsed: SplitResult) -> dict[str, Any]:
    """The TLS settings a rediss+cluster:// or rediss+sentinel:// URL's query may carry (as a rediss:// URL's do,
    which redis-py reads itself): a private CA's certificate above all, and a client certificate where the servers
    ask for one. Without TLS (redis+…) a query has nothing to say."""
    tls = parsed.scheme.startswith("rediss+")
    options: dict[str, Any] = {"ssl": True} if tls else {}
    for name, values in parse_qs(parsed.query, keep_blank_values=True).items():
        if not tls:
            raise ValueError(f"{parsed.scheme}:// takes no settings in its query ({name}): TLS is rediss+…://")
        if name not in TLS_QUERY:
            raise ValueError(f"{name} is not a setting of a {parsed.scheme}:// URL: {', '.join(TLS_QUERY)} are")
        value = values[-1]
        options[name] = value.lower() not in ("false", "no", "0") if name == "ssl_check_hostname" else value
    return options


def checked_redis_url(value: str) -> str:
    """`value`, if the gateway can use it; else a ValueError saying what it should look like."""
    if not value.startswith(SCHEMES):
        raise ValueError(
            "must be redis://HOST:PORT/DB, rediss://HOST:PORT/DB, unix:///PATH, "
            "redis+sentinel://HOST:PORT[,HOST:PORT…]/SERVICE[/DB] or redis+cluster://HOST:PORT[,HOST:PORT…] "
            "(rediss+… with TLS)"
        )
    parsed = urlsplit(value)
    if value.startswith(CLUSTER_SCHEMES) and parsed.path.strip("/") not in ("", "0"):
        raise ValueError("a Redis Cluster has one database, 0: leave the path out of redis+cluster://HOST:PORT,…")
    if value.startswith(SENTINEL_SCHEMES):
        sentinel_service(parsed)
    if value.startswith(CLUSTER_SCHEMES + SENTINEL_SCHEMES):
        tls_settings(parsed)  # a setting it does not know is said now, not at the first command
    return value


def sentinel_service(parsed: SplitResult) -> tuple[str, int]:
    """The service a redis+sentinel://…/SERVICE[/DB] URL names, and its database number."""
    path = [part for part in parsed.path.split("/") if part]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(
            "a Sentinel URL names the service its primary is found by: redis+sentinel://HOST:PORT,…/SERVICE[/DB]"
        )
    return path[0], int(path[1]) if len(path) == 2 else 0
