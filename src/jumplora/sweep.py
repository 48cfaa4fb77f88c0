"""A sweep: methods × orders × seeds from one YAML, each order into its own folder, then the report."""

from __future__ import annotations

from pathlib import Path

from jumplora.config import inputs_relative_to, load_config, load_yaml, normalise_keys, with_preset
from jumplora.resume import resumable_config
from jumplora.run_folder import OutputFolder
from jumplora.runner import run


def sweep(path: Path, force: bool = False, log=print) -> Path:
    """Every order of a sweep file (``order`` may be a list) into OUTPUT/order<k>, then the report.

    Runs already complete are skipped and stopped ones resumed (their settings must not have changed).
    """
    values = with_preset(inputs_relative_to(normalise_keys(load_yaml(path)), path.parent))
    orders = values.pop("order", None)
    orders = orders if isinstance(orders, list) else [orders]
    output = Path(values.pop("output", "runs/sweep"))
    folders = []
    for order in orders:
        folder = output / (f"order{order}" if order is not None else "stream")
        settings = {**values, "order": order, "output": str(folder)}
        if OutputFolder(folder).config_file.is_file():
            run(resumable_config(OutputFolder(folder), settings, force), log=log, resume=True)
        else:
            run(load_config(overrides=settings), log=log)
        folders.append(folder)
    from jumplora.report import build_report

    return build_report(folders, output / "report")
