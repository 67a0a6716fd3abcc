"""What every benchmark script shares: where its results go and how they are written."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"  # the JSON files the README quotes


def write_json(path: Path | str, result: dict) -> Path:
    """Write `result` as indented JSON (its folder made if missing) and say where. Unless the result
    names its command already, the command line that ran the script goes first, with the time written."""
    path = Path(path)
    script = Path(sys.argv[0])
    command = " ".join(["python", f"{script.parent.name}/{script.name}", *sys.argv[1:]])
    result = {"command": result.get("command", command),
              "written": datetime.datetime.now().isoformat(timespec="minutes"), **result}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {path}")
    return path
