"""One rank of the data-parallel test: run a stream through the real runner, dump the merged weights.

Started by tests/test_distributed.py under `torch.distributed.run` (2 CPU processes, gloo), and once
as a single process for the reference. Arguments: MODEL_DIR TASK_FILE OUTPUT BATCH_SIZE METHOD
[COMPILE_BACKEND].
Also writes each task's test accuracy of the final model, evaluated sharded over the processes and
whole on this process, to rank<i>-of-<n>.json.
"""

import json
import sys

from safetensors.torch import save_file

from jumplora.config import load_config
from jumplora.data.stream import resolve_stream
from transformers import AutoTokenizer

from jumplora.families import EncoderFamily
from jumplora.evaluation import evaluate
from jumplora.loop import StreamJob, run_stream
from jumplora.run_folder import OutputFolder
from jumplora.train import make_accelerator

model_dir, task_file, output, batch_size, method = sys.argv[1:6]
backend = sys.argv[6] if len(sys.argv) > 6 else None
config = load_config(overrides={"model": model_dir, "task_file": task_file, "output": output, "methods": [method],
                                "batch_size": int(batch_size), "learning_rate": 5e-3, "save_model": False,
                                "lora_dropout": 0.0, "compile": backend})
accelerator = make_accelerator("cpu", "fp32")
tasks = resolve_stream(config.data)
job = StreamJob(config, method, 0, OutputFolder(output).run(method, 0))
_, model = run_stream(job, tasks, accelerator, log=lambda *_: None)
state = {k: v.contiguous() for k, v in model.state_dict().items()}
save_file(state, f"{output}/rank{accelerator.process_index}-of-{accelerator.num_processes}.safetensors")
options = config.family_options
family = EncoderFamily(AutoTokenizer.from_pretrained(model_dir), options.max_source_length, options.encoder_temperature)
accuracy = {task.name: {"sharded": evaluate(model, family, task, 4, accelerator=accelerator),
                        "whole": evaluate(model, family, task, 4)} for task in tasks}
with open(f"{output}/rank{accelerator.process_index}-of-{accelerator.num_processes}.json", "w") as f:
    json.dump(accuracy, f)
