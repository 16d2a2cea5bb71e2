"""HTTP service, web page and tagged gallery (optional extra `serve`: fastapi, uvicorn, python-multipart).

Nothing here is imported by the core; `animetagnet.serve.cli` registers the `serve`, `index`
and `search` verbs and imports the web stack only when `serve` runs.
"""
