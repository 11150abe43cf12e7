"""Runs TensorZero's gateway, embedded in its Python wheel, as an HTTP server (peer target).

Run with the peer venv's python: ``tensorzero_gateway.py CONFIG.toml URL_FILE``. The wheel
picks the port itself, so the base URL is written to URL_FILE once the gateway listens.
"""

import sys
import threading
from pathlib import Path

import tensorzero  # type: ignore[import-not-found]


def main() -> None:
    config, url_file = sys.argv[1], Path(sys.argv[2])
    gateway = tensorzero._start_http_gateway(
        config_file=config,
        clickhouse_url=None,
        postgres_url=None,
        valkey_url=None,
        async_setup=False,
    )
    url_file.write_text(gateway.base_url + "\n")
    threading.Event().wait()  # serve until the harness stops the process group


if __name__ == "__main__":
    main()
