"""`vramfit serve`: the HTTP API and the web page on one port (FastAPI + uvicorn: pip install 'vramfit[web]')."""

from __future__ import annotations

import argparse
import sys

from vramfit.errors import InvalidSetting, MissingExtra


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("serve", help="start the HTTP API and the web page (needs vramfit[web])")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    parser.add_argument("--allow-network", action="store_true",
                        help="let requests name hub models outside the catalog, read from the Hugging Face hub "
                             "(default: off; requests use the catalog or a pasted config.json)")
    parser.add_argument("--max-body-kib", type=int, default=1024,
                        help="largest request body accepted, in KiB (default: 1024)")
    parser.add_argument("--request-timeout", type=float, default=30.0,
                        help="seconds a request may run before it gets 503 (default: 30)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError as error:
        raise MissingExtra("vramfit serve needs uvicorn and FastAPI; install them with: "
                           "pip install 'vramfit[web]'") from error
    from vramfit.web.app import create_app

    if not args.request_timeout > 0:
        raise InvalidSetting(f"--request-timeout: {args.request_timeout} must be more than 0 seconds, e.g. 30")
    app = create_app(allow_network=args.allow_network, max_body_bytes=args.max_body_kib * 1024,
                     request_timeout_s=args.request_timeout)
    print(f"vramfit: serving http://{args.host}:{args.port}/ (API docs at /docs)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
