"""Fine-tuning of converted models (``recover="finetune"``): distillation from the original model over a
trainable view of the converted one, checkpoints, and the write-back of trained weights into the user's graph.

See ``_view`` (the format's trainable view, ``formats.Trainable``: each format builds its own under
``formats/``), ``_objective`` (losses and the held-out metric), ``_checkpoint`` and ``_loop`` (the training
loop). Calibration (``recovery._calibrate``) does not depend on this package.
"""

from __future__ import annotations

from ._loop import FinetuneOptions, FinetuneResult, finetune
from ._view import TrainableView, trainable_view

__all__ = ["FinetuneOptions", "FinetuneResult", "TrainableView", "finetune", "trainable_view"]
