"""Original against converted: fidelity (``_verify``: the saved files run side by side on the same inputs, on the
real runtime) and accuracy on the user's labelled or unlabelled samples (``_accuracy``: top-1, top-1 agreement,
relative error, streamed batch by batch).

It reports; it decides nothing about layers and changes no model.
"""

from __future__ import annotations

from ._accuracy import Scorer, better
from ._verify import batches, load_user_inputs, random_inputs, resolve_input_shapes, verify

__all__ = ["Scorer", "batches", "better", "load_user_inputs", "random_inputs", "resolve_input_shapes", "verify"]
