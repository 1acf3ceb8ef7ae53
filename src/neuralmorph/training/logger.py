"""Run logging: `metrics.csv` always, TensorBoard scalars (and mesh / image previews) when `tensorboard` is installed.

Only rank 0 builds a `RunLogger` that writes; other ranks get a disabled one. `metrics.csv` holds one
row per step that logged anything (step, lr, loss, the model's own logs, `val/...` metrics of the
validation split, `test/...` metrics of the test split at the last step); when a new column appears the
file is rewritten with the wider header. TensorBoard tags are the same names, the training scalars
under `train/`; a model's previews (meshes and images, `previews`) go to TensorBoard only. On resume,
rows after the checkpoint's step (written by the killed run after its last checkpoint) are dropped, and
TensorBoard purges its events after that step too, so both read as one uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path

import torch

from neuralmorph.atomic import atomic_file

METRICS_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
_FIRST = ("step", "lr", "loss")


def _fmt(x) -> str:
    if x is None or x == "":
        return ""
    x = float(x)
    return repr(x) if math.isfinite(x) else str(x)


class RunLogger:
    """Collects scalars per step and writes them to metrics.csv (+ TensorBoard)."""

    def __init__(self, out: Path, enabled: bool, resume_step: int | None = None, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(out) / METRICS_FILE
        self.columns: list[str] = list(_FIRST)
        self.rows: list[dict[str, str]] = []
        self._pending_step: int | None = None
        self._pending: dict[str, float] = {}
        self.writer = None
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():
            self._read_existing(resume_step)
        else:
            self._rewrite()
        if tensorboard:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                SummaryWriter = None
            if SummaryWriter is not None:
                purge = None if resume_step is None else resume_step + 1
                self.writer = SummaryWriter(str(Path(out) / TENSORBOARD_DIR), purge_step=purge)

    # --- files ------------------------------------------------------------------------------------

    def _read_existing(self, resume_step: int) -> None:
        with open(self.path, newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or list(_FIRST)
            rows = [r for r in reader if r.get("step") and int(r["step"]) <= resume_step]
        self.columns = list(_FIRST) + [c for c in header if c not in _FIRST]
        self.rows = rows
        self._rewrite()

    def _rewrite(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n", restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        with atomic_file(self.path) as tmp:
            tmp.write_text(buf.getvalue())

    def _flush_pending(self) -> None:
        if self._pending_step is None:
            return
        values, step = self._pending, self._pending_step
        self._pending, self._pending_step = {}, None
        row = {"step": str(step), **{k: _fmt(v) for k, v in values.items()}}
        self.rows.append(row)
        new = [k for k in values if k not in self.columns]
        if new:
            self.columns += sorted(new)
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=self.columns, lineterminator="\n", restval="").writerow(row)

    # --- API --------------------------------------------------------------------------------------

    def log(self, step: int, values: dict[str, float]) -> None:
        """Record scalars for `step` (rows are merged per step and written when the step changes)."""
        if not self.enabled or not values:
            return
        if self._pending_step is not None and self._pending_step != step:
            self._flush_pending()
        self._pending_step = step
        self._pending.update({k: float(v) for k, v in values.items()})
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k if "/" in k else f"train/{k}", float(v), step)

    def previews(self, step: int, items: dict) -> None:
        """Write a model's TensorBoard previews at `step`; no-op without TensorBoard. Each value is either a
        mesh, (vertices (1, V, 3) float, faces (1, F, 3) int), written with `add_mesh`, or an image, one
        tensor (H, W, 3) float in [0, 1] (HWC), written with `add_image`."""
        if not self.enabled or self.writer is None:
            return
        for name, value in items.items():
            if isinstance(value, torch.Tensor):
                if value.dim() != 3 or value.shape[-1] != 3:
                    raise ValueError(f"preview {name!r}: an image must be (H, W, 3), got {tuple(value.shape)}")
                self.writer.add_image(name, value.detach().float().cpu(), step, dataformats="HWC")
            else:
                vertices, faces = value
                self.writer.add_mesh(name, vertices=vertices.detach().float().cpu(),
                                     faces=faces.detach().int().cpu(), global_step=step)

    def flush(self) -> None:
        """Write everything recorded so far (called before each checkpoint, so files agree with it)."""
        if not self.enabled:
            return
        self._flush_pending()
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
