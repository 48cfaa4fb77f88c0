"""The README's evidence tables are what `python evidence/tables.py` builds from the kept records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from jumplora.record import RunRecord

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_tables_equal_what_the_evidence_script_prints():
    done = subprocess.run([sys.executable, str(ROOT / "evidence" / "tables.py"), "--check"], capture_output=True,
                          text=True)
    assert done.returncode == 0, f"README.md differs from `python evidence/tables.py`: run it with --write\n{done.stderr}"


def test_every_kept_record_reads_and_names_no_path_of_a_machine():
    records = sorted((ROOT / "evidence").glob("*/results.json"))
    assert records
    for path in records:
        RunRecord.read(path)  # its fields and its own SHA-256
        assert '"/' not in path.read_text(), f"{path} holds an absolute path: keep it with evidence/tables.py --collect"
        assert path.stat().st_size < 1_000_000
    assert json.loads(records[0].read_text())["tasks"]


def test_empty_blocks_side_by_side_are_each_filled_and_text_between_them_kept():
    sys.path.insert(0, str(ROOT / "evidence"))
    try:
        import tables
    finally:
        sys.path.pop(0)
    text = "<!-- evidence:a -->\n<!-- /evidence -->\nbetween\n<!-- evidence:b -->\n<!-- /evidence -->\n"
    filled = tables.readme_with({"a": "| A |", "b": "| B |"}, text)
    assert filled == "<!-- evidence:a -->\n| A |\n<!-- /evidence -->\nbetween\n<!-- evidence:b -->\n| B |\n<!-- /evidence -->\n"
    assert tables.readme_with({"a": "| A |", "b": "| B |"}, filled) == filled  # rewriting changes nothing


def test_a_numeric_lambda_is_labelled_as_the_readme_writes_it():
    sys.path.insert(0, str(ROOT / "evidence"))
    try:
        import tables
    finally:
        sys.path.pop(0)
    assert [tables.power_of_ten(v) for v in (30000, 1.7e6, 3.7e5, 500)] == ["3×10⁴", "1.7×10⁶", "3.7×10⁵", "500"]
