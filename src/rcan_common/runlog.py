"""The metrics log of a training run: rows appended to `metrics.csv` and scalars in TensorBoard
event files under `tb/`, both in the run directory and both continued by a resumed run.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping, Sequence


class RunLog:
    """metrics.csv + TensorBoard writer of one run directory.

    The CSV columns are `columns`, or the keys of the first row written; a resumed run (the file
    exists) keeps its file's columns and writes no second header.  Keys outside the columns are
    ignored.  Every row is flushed, so the file is complete up to the last row after a kill.
    `purge_step`: TensorBoard drops events at or after this step (a resumed run rewrites them).
    """

    def __init__(self, run_dir: str | Path, columns: Sequence[str] | None = None, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        run_dir = Path(run_dir)
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=purge_step)
        self.path = run_dir / "metrics.csv"
        self._new = not self.path.is_file()
        self._columns = list(columns) if columns is not None else None
        if not self._new:  # a resumed run keeps its file's columns (older runs may lack newer ones)
            with open(self.path, newline="") as f:
                self._columns = next(csv.reader(f), self._columns)
        self._file = open(self.path, "a", newline="")
        self._csv: csv.DictWriter | None = None
        if self._columns is not None:
            self._start()

    def _start(self) -> None:
        self._csv = csv.DictWriter(self._file, self._columns, extrasaction="ignore")
        if self._new:
            self._csv.writeheader()

    def write(self, row: Mapping[str, Any]) -> None:
        """Append one CSV row and flush it."""
        if self._csv is None:
            self._columns = list(row)
            self._start()
        self._csv.writerow(row)
        self._file.flush()

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.tb.add_scalar(tag, value, step)

    def close(self) -> None:
        self._file.close()
        self.tb.close()
