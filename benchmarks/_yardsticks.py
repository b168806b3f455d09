"""The yardsticks benchmarks/cpu_cost.py measures the gateway against: a plain aiohttp relay of ~30 lines and nginx
(one worker, proxy_buffering off, upstream keepalive), each started in front of the simulator."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from _procs import free_port, listening

# The yardstick: what any aiohttp relay costs. Keep-alive to the backend, the body read whole, the stream relayed
# chunk by chunk as it arrives; no logging, metrics, admission or accounts.
PLAIN_RELAY = """
import asyncio, sys
import aiohttp, uvloop
from aiohttp import web

UPSTREAM = sys.argv[1]
HOP = {"host", "connection", "keep-alive", "content-length", "transfer-encoding"}
session: aiohttp.ClientSession


async def relay(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    async with session.request(request.method, UPSTREAM + request.path_qs, data=body, headers=headers) as upstream:
        response = web.StreamResponse(status=upstream.status)
        response.content_type = upstream.content_type
        await response.prepare(request)
        async for data in upstream.content.iter_any():
            await response.write(data)
        await response.write_eof()
        return response


async def main() -> None:
    global session
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", relay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(f"http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


uvloop.run(main())
"""

NGINX_CONF = """master_process off;
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream backend {{ server {upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;  # the simulator, as Ollama, answers only to a local Host
            proxy_buffering off;
        }}
    }}
}}
"""


# ---- processes and their CPU -----------------------------------------------------------------------------------------


def start_plain(sim_url: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PLAIN_RELAY, sim_url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise SystemExit("the plain relay did not start")
    return proc, url


def start_nginx(sim_url: str, tmp: Path) -> tuple[subprocess.Popen[str], str]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(nginx, os.X_OK):
        raise SystemExit("--nginx: nginx is not installed (apt-get install nginx-light)")
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, upstream=sim_url.removeprefix("http://"), port=port))
    proc = subprocess.Popen(
        [nginx, "-p", str(tmp), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
    )
    if not listening(port, proc):
        raise SystemExit("nginx did not start")
    return proc, f"http://127.0.0.1:{port}"
