"""Getting accuracy back after the data-free decomposition: calibration (``_calibrate``: refit each converted
layer on the user's samples, layer by layer, maths in ``algebra``) and fine-tuning (``finetune/``: a training
loop over a trainable view of the converted model, distilled from the original).

``finetune`` is its own entry point because it imports torch; importing this package does not.
"""

from __future__ import annotations

from ._calibrate import held_out, recover

__all__ = ["held_out", "recover"]
