"""The HTTP API and the web page: `vramfit serve` (FastAPI + uvicorn, the optional extra `web`)."""
