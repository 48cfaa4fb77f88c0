"""Two tasks whose texts come from different vocabularies (sport/food, finance/weather): a stream a
router must separate completely, with texts varied enough to have a spread."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = {
    "sport": "goal match striker coach league team season penalty stadium cup referee win".split(),
    "food": "soup bread recipe oven spicy dinner salad cheese bake kitchen flavour pasta".split(),
    "finance": "bank shares market profit investors interest stocks earnings bond merger inflation budget".split(),
    "weather": "rain storm forecast sunny wind snow temperature cloud humid thunder frost breeze".split(),
}
TASKS = {"topic": ("sport", "food"), "economy": ("finance", "weather")}


def sentences(label: str, count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(["the", *rng.sample(WORDS[label], 6)]) for _ in range(count)]


def write_topic_tasks(root: Path, train: int = 40, dev: int = 12, test: int = 8, names=tuple(TASKS)) -> Path:
    """One JSONL per task (records with a split field) and the task file listing them; returns it."""
    entries = []
    for t, name in enumerate(names):
        records = []
        for c, label in enumerate(TASKS[name]):
            for s, (split, count) in enumerate((("train", train), ("dev", dev), ("test", test))):
                seed = 100 * t + 10 * c + s
                records += [{"sentence": s, "label": label, "split": split} for s in sentences(label, count, seed)]
        random.Random(t).shuffle(records)
        (root / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in records))
        entries.append({"name": name, "path": f"{name}.jsonl", "instruction": f"Which {name}?"})
    (root / "topics.json").write_text(json.dumps(entries))
    return root / "topics.json"
