"""Where a training step's time goes: ``torch.profiler`` over a few steps of a real run,
summarised as a table of the operators and kernels that take the most device time (CPU time
on a machine without a GPU), with the share of the wall time the device was busy.

    prof = StepProfiler(RUN / "profile", first_step=start + 50, steps=5)
    for ...:
        prof.before(step)        # starts the profiler at first_step
        train_step(...)
        step += 1
        prof.after(step)         # stops it after `steps` steps and writes OUT.json + OUT.md

Writes ``OUT.json`` ({"steps", "wall_ms_per_step", "device_ms_per_step", "device_busy_pct",
"top_operators", "top_kernels": [{"name", "calls", "ms_per_step", "pct"}, ...]}) and
``OUT.md``; kernels only on a GPU. The profiled steps
are synchronised at both ends (a few slower steps; the run's throughput log includes them).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from flexicodec.common.atomic import write_report_files


class StepProfiler:
    """Profile steps ``[first_step, first_step + steps)`` of a loop (see the module doc)."""

    def __init__(self, out_prefix: str | os.PathLike, first_step: int, steps: int,
                 device: torch.device, top: int = 30):
        if steps < 1:
            raise ValueError(f"StepProfiler: steps must be >= 1, got {steps}")
        self.out, self.first, self.steps = Path(out_prefix), int(first_step), int(steps)
        self.device, self.top = torch.device(device), int(top)
        self.prof, self.t0, self.done = None, 0.0, False

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def before(self, step: int) -> None:
        """Call before the step numbered ``step`` (the count of steps done so far)."""
        if self.done or self.prof is not None or step != self.first:
            return
        acts = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        self._sync()
        self.prof = torch.profiler.profile(activities=acts)
        self.prof.__enter__()
        self.t0 = time.perf_counter()

    def after(self, step: int) -> dict | None:
        """Call after each step with the steps done so far; returns the summary once written."""
        if self.prof is None or step < self.first + self.steps:
            return None
        self._sync()
        wall = time.perf_counter() - self.t0
        self.prof.__exit__(None, None, None)
        summary = self.summarise(self.prof.key_averages(), wall)
        self.prof, self.done = None, True
        write_report_files(self.out, summary, self.markdown(summary))
        return summary

    def summarise(self, averages, wall_s: float) -> dict:
        """Top operators (by the device time of the kernels each launches itself; by self CPU
        time without a GPU) and, on a GPU, top kernels; a kernel's time is counted once."""
        n, on_device = self.steps, self.device.type == "cuda"

        def table(events, us) -> tuple[list[dict], float]:
            rows = sorted((e for e in events if us(e) > 0), key=us, reverse=True)
            total = sum(us(e) for e in rows)
            return [{"name": e.key, "calls": round(e.count / n, 1),
                     "ms_per_step": us(e) / 1000 / n, "pct": 100 * us(e) / total}
                    for e in rows[: self.top]], total

        cpu_side = [e for e in averages if e.device_type == torch.autograd.DeviceType.CPU]
        if on_device:
            ops, _ = table(cpu_side, lambda e: float(e.self_device_time_total))
            kernels, total_us = table(
                [e for e in averages if e.device_type != torch.autograd.DeviceType.CPU],
                lambda e: float(e.self_device_time_total))
        else:
            ops, total_us = table(cpu_side, lambda e: float(e.self_cpu_time_total))
            kernels = []
        return {"steps": n, "first_step": self.first, "device": str(self.device),
                "time": "device (kernels)" if on_device else "CPU (self time of operators)",
                "wall_ms_per_step": 1000 * wall_s / n,
                "device_ms_per_step": total_us / 1000 / n,
                # summed kernel time over wall time (overlapping streams could exceed 100)
                "device_busy_pct": 100 * total_us / 1e6 / wall_s if on_device else None,
                "top_operators": ops, "top_kernels": kernels}

    @staticmethod
    def markdown(s: dict) -> str:
        busy = "" if s["device_busy_pct"] is None else \
            f", device busy {s['device_busy_pct']:.0f} % of the wall time"
        lines = [f"# Profile: {s['steps']} steps from step {s['first_step']} on {s['device']}",
                 "", f"Wall {s['wall_ms_per_step']:.1f} ms per step; {s['time']} "
                 f"{s['device_ms_per_step']:.1f} ms per step{busy}.", "",
                 ]
        for title, rows in (("operator", s["top_operators"]), ("kernel", s["top_kernels"])):
            if not rows:
                continue
            lines += [f"| {title} | calls per step | ms per step | % |", "|---|---|---|---|"]
            for r in rows:
                name = r["name"].replace("|", "\\|")
                name = name if len(name) <= 110 else name[:107] + "..."
                lines.append(f"| `{name}` | {r['calls']} | {r['ms_per_step']:.2f} | "
                             f"{r['pct']:.1f} |")
            lines.append("")
        return "\n".join(lines)
