"""Small server-rendered pages for people (the landing page; the cashier grows here)."""

from __future__ import annotations

from litestar import MediaType, get

from gateway import __version__

_INDEX = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>paygate</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}}
</style>
</head><body>
<h1>paygate</h1>
<p>Unified payment gateway for government non-tax revenue — version {version}.</p>
<ul>
<li><a href="/schema">API reference (OpenAPI)</a></li>
<li><a href="/health/ready">Readiness</a></li>
</ul>
</body></html>"""


@get("/", media_type=MediaType.HTML, include_in_schema=False, cache=False)
async def index() -> str:
    return _INDEX.format(version=__version__)
