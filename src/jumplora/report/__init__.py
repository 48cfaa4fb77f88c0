"""Tables and figures from the results.json files of one or more runs (``jumplora report``).

    build_report([Path("runs/latest")], Path("runs/latest/report"))  # -> .../report.html

Reads every ``results.json`` below the given folders (not the single-task baselines), groups the runs
by stream and method, and writes ``report.md``, a self-contained ``report.html`` and PNG figures.
"""

from __future__ import annotations

from pathlib import Path

from jumplora.errors import JumploraError


def build_report(run_dirs: list[Path], output: Path) -> Path:
    """Write the report of the runs below ``run_dirs`` into ``output``; return the path of report.html.

    Raises :class:`JumploraError` for a folder that does not exist or holds no results.json, for a
    malformed results.json, and when matplotlib (the ``report`` extra) is not installed.
    """
    try:
        import matplotlib  # noqa: F401  (an optional dependency: say how to get it)
    except ImportError:
        raise JumploraError("the report needs matplotlib: pip install 'jumplora[report]'") from None
    from jumplora.report.build import build_report as build

    return build(run_dirs, output)


__all__ = ["build_report"]
