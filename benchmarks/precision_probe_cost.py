"""What the low-precision probe (ptasr.precision_probe) adds to a model's set-up on this CPU.

For the demo's model (tiny preset, 64 conv channels) and XLS-R 300m's shape (random weights), each timed from
an empty verdict cache: the recording forward pass (one second of audio, bf16 autocast) plus the probe of every
distinct conv/linear call, for inference (outputs) and for training (outputs and gradients); beside it, the
model's build time for scale. The load average is recorded with every figure.

    python benchmarks/precision_probe_cost.py --out benchmarks/results/precision_probe_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import date
from pathlib import Path

import torch
from train_throughput import cpu_name  # the script beside this one

from ptasr.model.config import Wav2Vec2Config
from ptasr.model.wav2vec2 import Wav2Vec2CTC
from ptasr.precision_probe import probe_seconds, record_calls

MODELS = {"demo (tiny, 64 conv channels)": ("tiny", {"conv_dim": [64] * 7}), "xls-r-300m shape": ("xls-r-300m", {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/precision_probe_cpu.json"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    report = {"benchmark": "precision_probe_cost", "date": str(date.today()), "cpu": cpu_name(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "models": {}}
    for name, (preset, overrides) in MODELS.items():
        start = time.perf_counter()
        model = Wav2Vec2CTC(Wav2Vec2Config.preset(preset, vocab_size=40, pad_token_id=0, **overrides))
        build = time.perf_counter() - start
        calls = record_calls(model, torch.bfloat16, (torch.randn(1, 16000), torch.tensor([16000])))
        row = {"build_s": round(build, 2), "distinct_calls": len(calls)}
        for label, gradients in (("inference", False), ("training", True)):
            times = [probe_seconds(model, torch.bfloat16, gradients) for _ in range(args.repeats)]
            row[f"probe_{label}_s"] = [round(t, 3) for t in times]
        row["loadavg"] = [round(v, 2) for v in os.getloadavg()]
        report["models"][name] = row
        print(name, row, flush=True)
        del model
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
