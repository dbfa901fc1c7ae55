"""What every benchmark does last: print its table, and write its figures as JSON when asked."""

from __future__ import annotations

import json
from typing import Any


def emit(table: str, result: dict[str, Any], json_path: str | None) -> int:
    """Print ``table``; write ``result`` to ``json_path`` if one was given; the exit status (0)."""
    print(table)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    return 0
