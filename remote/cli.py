"""`dits-remote` entry point. The server is built in the next issue; until then this says so."""

from __future__ import annotations

import sys


def main() -> int:
    """Explain that the server is not built yet and exit with the usage code."""
    print("dits-remote: the server is not built yet (see the remote issue)", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
