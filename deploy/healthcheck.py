#!/usr/bin/env python3
"""The containers' HEALTHCHECK: exit 0 when serve's /healthz answers 200, 1 otherwise (and say why).

Standard library only (the slim images have no curl) and quick to start: it does
not import the runtime. The port is LINESIDE_PORT, as serve reads it, else 8080
(ServeSettings.port's default); an argument gives another URL.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    url = argv[0] if argv else f"http://127.0.0.1:{os.environ.get('LINESIDE_PORT') or 8080}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            print(response.read(200).decode("utf-8", "replace").strip())
            return 0
    except urllib.error.HTTPError as e:
        print(f"{url}: {e.code} {e.read(200).decode('utf-8', 'replace').strip()}")
    except (OSError, ValueError) as e:
        print(f"{url}: {e}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
