"""Movement pruning (Sanh et al. 2020): scores traced during the dense fine-tune
(:class:`deepcuts.scoring.trace.MovementTrace`)."""

from __future__ import annotations

import torch
from torch import nn

from deepcuts.strategies.base import Strategy


class Movement(Strategy):
    """Movement: ``S = -sum_s W_s * G_s`` over every optimiser step ``s`` of the dense fine-tune
    (Sanh et al.'s first-order movement score): weights moving away from zero score high, those
    pulled towards it low (signed; the top scores are kept). Traced by
    :class:`deepcuts.scoring.trace.MovementTrace` while the dense model trains, so it costs no scoring pass
    and sees every training batch. The trace covers every epoch of the dense fine-tune, also when
    ``selection`` keeps an earlier one; it needs ``epochs_dense >= 1``."""

    needs_data = False
    from_dense = True

    def data_free_scores(self, params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
        raise RuntimeError("movement scores come from the dense fine-tune's trace, not from the weights.")
