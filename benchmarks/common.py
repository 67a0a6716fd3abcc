"""What every benchmark script shares: where its results go and how they are written."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"  # the JSON files the README quotes


def write_json(path: Path | str, result: dict) -> Path:
    """Write `result` as indented JSON (its folder made if missing) and say where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {path}")
    return path
