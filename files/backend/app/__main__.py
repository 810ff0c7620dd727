"""Entry point: ``python -m app`` reads settings from the environment and serves."""

from __future__ import annotations

import sys

from .main import create_app
from .server import build_server, configure_logging
from .settings import Settings, SettingsError


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"backend: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    server = build_server(settings, create_app(settings))
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
