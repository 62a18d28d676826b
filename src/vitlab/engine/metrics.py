"""``metrics.jsonl``: one JSON record per line (``kind``: data, train, epoch, eval), written by rank 0.

Records are strict JSON (NaN and infinities become ``null``). A crash can leave the last line half
written; :func:`read_records` skips such a torn last line, and a resumed run first drops every
record written after its checkpoint, so the file ends up the same as for an uninterrupted run.
"""
from __future__ import annotations

import json
from pathlib import Path

from vitlab.checkpoints.atomic import atomic_write_text, to_json
from vitlab.errors import DataError

METRICS_NAME = "metrics.jsonl"


def read_records(path: str | Path) -> list[dict]:
    """All records of a ``metrics.jsonl`` (a torn last line is skipped; a corrupt earlier line is an error)."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [x for x in path.read_text().splitlines() if x.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break          # a write cut short by a crash
            raise DataError(f"{path}:{i + 1}: not a JSON record ({line[:60]!r})") from None
    return records


class MetricsLog:
    """Append-only record writer; ``resume_step`` drops records after that step first (exact resume).

    ``sinks``: more writers (each with ``write(record)``, e.g. the TensorBoard log) handed every record.
    """

    def __init__(self, path: str | Path, enabled: bool = True, resume_step: int | None = None):
        self.path, self.enabled, self.file, self.sinks = Path(path), enabled, None, []
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_records(self.path) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(to_json(r) + "\n" for r in kept))
        self.file = open(self.path, "a")

    def write(self, record: dict) -> None:
        if self.file is not None:
            self.file.write(to_json(record) + "\n")
            self.file.flush()
            for sink in self.sinks:
                sink.write(record)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
