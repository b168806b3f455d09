"""The aiohttp application: routes, the page's JSON API, WebSocket and SSE, pages, static files, request helpers."""
