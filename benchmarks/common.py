"""What the benchmark scripts share: flags, timing, peak memory, the metadata row, the table, the JSON.

Timing on CUDA uses one pair of CUDA events per iteration (read after a single synchronize), so
what is measured is GPU time of the queued work and the host is never stalled inside the loop; on
the CPU it is perf_counter. Peak memory on CUDA is torch.cuda.max_memory_allocated() (reset at the
start of the measured block, so it includes whatever is already allocated: weights, inputs); on the
CPU it is the growth of the process's peak resident set (VmHWM, reset through /proc/self/clear_refs),
or None where Linux does not let us reset it. Each metadata row says which of the two it is.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "models" / "t5-tokenizer"
# t5-large's config.json (relu feed-forward, the T5 1.0 vocabulary); --quick uses the tiny one.
T5_LARGE = dict(d_model=1024, d_kv=64, d_ff=4096, num_layers=24, num_decoder_layers=24, num_heads=16)
T5_TINY = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4)
# T5-large's depth, heads and vocabulary with tiny widths: the same ~20,000 operations per training
# step as T5-large, each on a few numbers, so a step's time is what the host spends issuing them.
T5_HOST = dict(d_model=64, d_kv=4, d_ff=128, num_layers=24, num_decoder_layers=24, num_heads=16)


def parser(description: str, dtype: bool = True) -> argparse.ArgumentParser:
    """The flags every script takes: --device, --json, --quick (and --dtype where it applies)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    if dtype:
        p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--quick", action="store_true", help="tiny sizes: a CPU smoke test, not a figure")
    p.add_argument("--threads", type=int, help="CPU threads for torch (on a busy shared machine 1 is the steadiest)")
    p.add_argument("--json", type=Path, help="write the rows (metadata first) to this JSON file")
    p.add_argument("--profile", metavar="NAME", help="also print torch.profiler's top operations for the rows "
                                                     "whose name contains NAME")
    return p


def check_device(args: argparse.Namespace) -> torch.device:
    """The device of --device (and --threads applied)."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.device(args.device)


def t5(quick: bool, device: torch.device, sizes: dict | None = None):
    """T5-large (or ``sizes``, or with ``quick`` a tiny T5) with random weights, built on ``device``
    from its config, seed 0."""
    from transformers import T5Config, T5ForConditionalGeneration

    sizes = sizes or (T5_TINY if quick else T5_LARGE)
    config = T5Config(vocab_size=32128, feed_forward_proj="relu", pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0, **sizes)
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the GPU: building T5-large on the CPU takes ~10 s
        return T5ForConditionalGeneration(config)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device, iters: int, warmup: int) -> list[float]:
    """Milliseconds of each of ``iters`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize(device)
        return [start.elapsed_time(end) for start, end in events]
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e3)
    return times


def profile(name: str, fn, device: torch.device, iters: int = 3, rows: int = 15) -> None:
    """Print torch.profiler's operations of ``iters`` calls of ``fn``, the most device time first.

    On CUDA, compare "Self CUDA time total" / iters with the row's ms: what is not kernel time is
    the GPU waiting for the host (Python, launches).
    """
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(iters):
            fn()
        synchronize(device)
    print(f"--- profile of {name}, {iters} iterations")
    print(prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=rows))


def median(values: list[float]) -> float:
    return statistics.median(values)


def peak_kind(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated (absolute, includes weights and inputs)"
    return "CPU: growth of peak RSS (VmHWM) over the block" if _can_reset_rss() else "CPU: not measured (null)"


@contextmanager
def peak_memory(device: torch.device):
    """Yields a dict whose "mib" is set, after the block, to its peak memory (see the module docstring)."""
    result = {"mib": None}
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    elif _can_reset_rss():
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
        before = _status_kib("VmRSS")
    yield result
    if device.type == "cuda":
        synchronize(device)
        result["mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    elif _can_reset_rss():
        result["mib"] = round(max(0, _status_kib("VmHWM") - before) / 1024, 1)


def can_measure_rss() -> bool:
    """Whether the CPU peak memory can be measured here (Linux lets us reset the peak RSS)."""
    return _can_reset_rss()


def _can_reset_rss() -> bool:
    return os.access("/proc/self/clear_refs", os.W_OK) and Path("/proc/self/status").is_file()


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def free_memory(device: torch.device) -> None:
    """Give cached blocks back, so the next configuration's peak starts from what it allocates."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def metadata(device: torch.device, dtype: str | None, **extra) -> dict:
    """The header row: what ran where, so a number is never read without its machine."""
    import peft
    import transformers

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "name": "metadata",
        "device": str(device),
        "device_name": name,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "dtype": dtype,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "peak_mib_is": peak_kind(device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def report(rows: list[dict], columns: list[str], path: Path | None) -> None:
    """Print the metadata, then a table of ``columns`` of the other rows; write all rows to ``path``."""
    head, body = rows[0], rows[1:]
    print(", ".join(f"{k}={v}" for k, v in head.items() if k != "name"))
    cells = [[_cell(row.get(c)) for c in columns] for row in body]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=2) + "\n")
        print(f"wrote {path}")


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def layer_kernels(device: torch.device, compiled: bool | None):
    """The :class:`~jumplora.adapters.Kernels` of an adapter set whose elementwise kernels run
    compiled (True) or eager (False) on ``device``; None leaves the library's default (compiled on
    CUDA, eager elsewhere)."""
    from jumplora.adapters import Kernels

    if compiled is None:
        return None
    default = Kernels().compile_on
    return Kernels(frozenset(default | {device.type} if compiled else default - {device.type}))


def other_kernels(device: torch.device) -> tuple[str, bool]:
    """The non-default way of running the layer's kernels on ``device``: its row label and flag."""
    return ("eager layer kernels", False) if device.type == "cuda" else ("compiled layer kernels", True)
