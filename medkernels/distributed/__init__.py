"""Multi-process (``torch.distributed``) versions of the ops: the loss over the global batch
without gathering it on one rank."""

from .sigmoid_loss import sigmoid_loss

__all__ = ["sigmoid_loss"]
