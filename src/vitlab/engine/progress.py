"""Progress reporting: a tqdm bar (throughput, ETA, loss) on a terminal, plain log lines when piped.

A bar is drawn only when stderr is a terminal (``run.progress: auto``) or when asked for (``bar``),
so a log file never fills with carriage-return redraws; ``log`` prints one line every
``run.log_every`` steps instead. Messages go through :meth:`Progress.write` so they do not tear a bar.
"""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, mode: str = "auto", enabled: bool = True):
        if mode not in ("auto", "bar", "log"):
            raise ValueError(f"run.progress must be auto, bar or log, got {mode!r}")
        self.enabled = enabled
        self.use_bar = enabled and (mode == "bar" or (mode == "auto" and sys.stderr.isatty()))
        self.bar = None
        self.t0 = time.perf_counter()
        self.done_steps = 0

    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int) -> None:
        if self.use_bar:
            from tqdm import tqdm
            self.bar = tqdm(total=steps, initial=done, desc=f"epoch {epoch + 1}/{epochs}", unit="step",
                            dynamic_ncols=True, leave=True)

    def update(self, loss: float, lr: float, images_per_s: float) -> None:
        self.done_steps += 1
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{images_per_s:.0f}", refresh=False)
            self.bar.update(1)

    def log_line(self, record: dict, total_steps: int) -> None:
        if not self.enabled or self.use_bar:
            return
        elapsed = time.perf_counter() - self.t0
        rate = self.done_steps / max(elapsed, 1e-9)
        eta = (total_steps - record["step"]) / max(rate, 1e-9)
        print(f"epoch {record['epoch']} step {record['step']}/{total_steps} loss {record['loss']:.4f} "
              f"lr {record['lr']:.2e} {record['images_per_s']:.0f} img/s eta {eta / 60:.1f} min", flush=True)

    def write(self, message: str) -> None:
        """Print a message without breaking the bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
