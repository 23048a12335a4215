"""Serve an empty NimbusServer until Ctrl-C: ``python -m nimbus_server [--token T]``."""

from __future__ import annotations

import argparse
import threading

from nimbus_server import NimbusServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--token", help="the Girder-Token to accept (default: random)")
    args = parser.parse_args()
    with NimbusServer(token=args.token) as server:
        print(f"url:   {server.url}", flush=True)
        print(f"token: {server.token}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
