"""rcan_common.runlog (metrics.csv + TensorBoard, continued on resume) and rcan_common.provenance."""
from __future__ import annotations

import csv
import hashlib

from rcan_common import provenance
from rcan_common.runlog import RunLog


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_columns_from_the_first_row_and_kept_on_resume(tmp_path):
    log = RunLog(tmp_path)
    log.write({"step": 1, "loss": 0.5})
    log.scalar("train/loss", 0.5, 1)
    log.close()
    resumed = RunLog(tmp_path, columns=["step", "loss", "newer"], purge_step=2)  # the file's columns win
    resumed.write({"step": 2, "loss": 0.25, "newer": 9, "unknown": 1})
    resumed.close()
    assert _rows(tmp_path / "metrics.csv") == [["step", "loss"], ["1", "0.5"], ["2", "0.25"]]
    assert any((tmp_path / "tb").iterdir())


def test_given_columns_ignore_other_keys_and_leave_blanks(tmp_path):
    log = RunLog(tmp_path, columns=["updates", "loss", "eval"])
    log.write({"updates": 10, "loss": 1.0, "extra": 3})
    log.close()
    assert _rows(tmp_path / "metrics.csv") == [["updates", "loss", "eval"], ["10", "1.0", ""]]


def test_provenance(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"rcan")
    assert provenance.file_sha256(f) == hashlib.sha256(b"rcan").hexdigest()
    v = provenance.package_versions(["numpy", "rcan_bringup", "surely-not-a-distribution"])
    assert v["python"] and v["numpy"] and "rcan" in v and v["surely-not-a-distribution"] == "not installed"
    commit = provenance.git_commit()
    assert commit == "unknown" or len(commit.split("+")[0]) == 40
