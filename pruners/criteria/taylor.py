"""First-order Taylor importance (Molchanov et al., CVPR 2019, "Importance Estimation for Neural
Network Pruning"): how much the loss would change if a channel were removed, estimated per
mini-batch as (sum over the batch and positions of activation x gradient)^2 at the outputs of
the layers that write the channel, averaged over the batches given to ``step(data=...)``. The
channels of least importance go."""
import torch

from pruners.criteria.base import Criterion, GroupView, register_criterion


@register_criterion("taylor")
class Taylor(Criterion):
    needs_data = True

    def scores(self, view: GroupView) -> torch.Tensor:
        if "taylor" not in view.data:
            raise ValueError("the taylor criterion needs data: call step(data=batches) with "
                             "(inputs, targets) batches")
        return view.per_unit(view.data["taylor"][:, None]).sum(dim=1)

    def describe(self) -> str:
        return "first-order Taylor (activation x gradient)"
