"""``python -m sandbox.proxy``: the stack's HTTPS proxy (docker-compose.yml's ``proxy`` service runs it)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from sandbox.errors import SandboxError
from sandbox.proxy.ca import StackCA
from sandbox.proxy.server import ProxyConfig, ProxyServer


async def _serve(server: ProxyServer) -> None:
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    config = server.config
    logging.getLogger("sandbox.proxy").info(
        "listening on %s:%d; *.blob.core.windows.net -> %s; other hosts %s; CA bundle %s",
        config.listen_host, server.port, config.blob_upstream, "refused (AML_SANDBOX_OFFLINE=1)" if config.offline
        else "tunnelled to public addresses only", server.ca.files.bundle)
    await stop.wait()
    await server.close()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = ProxyConfig.from_env()
        ca = StackCA.ensure(config.home)
        asyncio.run(_serve(ProxyServer(config, ca)))
    except (SandboxError, ValueError) as exc:
        print(f"aml-sandbox proxy: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"aml-sandbox proxy: cannot listen or keep the CA: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
