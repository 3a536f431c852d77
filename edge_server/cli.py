"""`hikariedge serve`: the whole node in one process with embedded defaults.
`hikariedge mask`: the same pipeline over a video or image file (edge_server/filemode.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from edge_server import filemode
from edge_server.config import ConfigError, check_runtime, load_config
from edge_server.node import Node, StartupInfo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hikariedge", description="HikariEdge live-stream masking media server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP API and the RTMP ingest")
    serve.add_argument("--config", help="YAML config file (default: configs/server.yaml)")
    serve.add_argument("--http-port", type=int)
    serve.add_argument("--rtmp-port", type=int)
    serve.add_argument("--data-dir")
    filemode.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "mask":
        return filemode.run(args)
    try:
        config = load_config(args.config)
        check_runtime(config)
    except ConfigError as exc:
        print(f"hikariedge: {exc}", file=sys.stderr)
        return 2
    if args.http_port is not None:
        config.http.port = args.http_port
    if args.rtmp_port is not None:
        config.rtmp.port = args.rtmp_port
    if args.data_dir:
        config.data_dir = args.data_dir
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(_serve(Node(config)))


async def _serve(node: Node) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        info = await node.start()
    except OSError as exc:
        print(f"hikariedge: cannot listen: {exc}", file=sys.stderr)
        return 1
    print(_banner(info), flush=True)
    await stop.wait()
    await node.stop()
    return 0


def _banner(info: StartupInfo) -> str:
    key_line = (
        f"  dev API key (shown once, only its hash is stored): {info.new_dev_key}"
        if info.new_dev_key
        else "  API key: as configured (or the dev key printed on first start; delete data/dev_api_key.json for a new one)"
    )
    return "\n".join(
        [
            "HikariEdge is running.",
            f"  HTTP API:   {info.http_url}   (health: /healthz, metrics: /metrics)",
            f"  Studio:     {info.http_url}/   (publish from the browser, watch the masked result)",
            f"  OBS server: {info.rtmp_server_url}",
            key_line,
            "  Create a session for a stream key:",
            f"    curl -X POST {info.http_url}/v1/sessions -H 'Authorization: Bearer <API key>' \\",
            "         -H 'Content-Type: application/json' -d '{\"mode\": \"anonymize\", \"targets\": [\"rtmp://live.example/app/KEY\"]}'",
            "  then paste rtmp.server_url into OBS's Server and rtmp.stream_key into Stream Key.",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
