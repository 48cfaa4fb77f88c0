"""Keep teaching a model from Python: load it, ask it, teach it a task, check what it forgot, undo that.

    python examples/teach.py [OUTPUT]      # a few minutes on 2 CPU cores; OUTPUT: runs/teach-example

First a model is made with the command line's code (all-MiniLM-L6-v2, JumpLoRA+IncLoRA, on the two
tasks of examples/tasks.yaml); from then on it is used only through ``jumplora.ContinualModel``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from jumplora import ContinualModel
from jumplora.cli import main

HERE = Path(__file__).resolve().parent


def make_model(output: Path) -> Path:
    """A small run, as `jumplora run --task-file examples/tasks.yaml` makes it."""
    code = main(["run", "--task-file", str(HERE / "tasks.yaml"), "--method", "jumplora+inclora", "--batch-size", "4",
                 "--max-source-length", "128", "--output", str(output / "run"), "--overwrite"])
    if code != 0:
        sys.exit(code)
    return output / "run" / "jumplora+inclora" / "seed0" / "model"


def demo(output: Path) -> None:
    model = ContinualModel.load(make_model(output))
    print("learned:", ", ".join(model.tasks))
    print("topics says:", model.predict(["The striker scored twice in the final minutes."], task="topics"))

    for old in ("v2", "v2.candidate", "v2-without-urgency"):
        shutil.rmtree(output / old, ignore_errors=True)
    outcome = model.teach(task_file=HERE / "urgency.yaml", output=output / "v2", max_forgetting=50)
    for row in outcome.forgetting:  # every earlier task: when learned, before, after
        print(f"  {row.task}: learned {row.learned:.1f}, before {row.before:.1f}, after {row.after:.1f}")
    print("accepted:", outcome.accepted, "->", outcome.model)

    taught = ContinualModel.load(outcome.model)
    print("v2 learned:", ", ".join(taught.tasks), "| generation", taught.manifest.generation)
    print("urgency says:", taught.predict(["The database is down, customers cannot log in"], task="urgency"))
    print("v2 accuracy:", {name: row["accuracy"] for name, row in taught.evaluate().items()})

    undone = taught.rollback("urgency", output / "v2-without-urgency")
    print("after rollback:", ", ".join(undone.tasks))


if __name__ == "__main__":
    demo(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs") / "teach-example")
