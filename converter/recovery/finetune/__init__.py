"""Fine-tuning of converted models (``recover="finetune"``): trainable views of each format, distillation from
the original model, checkpoints, and the write-back of trained weights into the user's own graph.

See ``_view`` (what a trainable view is), ``_onnx_view``/``_torchscript_view``/``_pt2_view`` (one per format),
``_objective`` (losses and the held-out metric) and ``_loop`` (the training loop). Calibration (``_calibrate``)
does not depend on this package.
"""

from __future__ import annotations

from ._loop import FinetuneOptions, FinetuneResult, finetune, resolve_device
from ._view import TrainableView, trainable_view

__all__ = ["FinetuneOptions", "FinetuneResult", "TrainableView", "finetune", "resolve_device", "trainable_view"]
