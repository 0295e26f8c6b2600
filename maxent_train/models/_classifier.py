"""Growing a C-class classifier by one output: PEBAL's abstention channel.

PEBAL starts from NVIDIA's 19-class WRN38 and gives its last convolution a 20th output
(``code/utils/pyt_utils.py:load_model(extra_channel=True)``): a ``(20, 256, 1, 1)`` weight drawn with
``torch.nn.init.kaiming_normal_`` (fan-in, gain sqrt(2)), whose first 19 rows are then replaced by the checkpoint's.
:func:`grow_classifier` does the same to each named ``Conv2d`` in place (module names, hooks and the state_dict keys
stay): ``(C+1, ...)`` Kaiming-normal, first ``C`` rows copied. WRN38's classifier has no bias; for a family whose
classifier has one, the first ``C`` entries are copied and the new one is 0 (what PEBAL's commented-out bias branch
of the same function does).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from .. import MaxentError


def grow_classifier(model: nn.Module, convs: Sequence[str], num_classes: int) -> None:
    """Give each ``Conv2d`` named in ``convs`` (``named_modules()`` names) one more output, in place, and set
    ``model.num_classes`` to ``num_classes + 1``.

    Parameters
    ----------
    model : torch.nn.Module
        Its convolutions in ``convs`` have ``num_classes`` outputs (the weights loaded from ``--init``).
    convs : sequence of str
        The family's classifier convolutions (:class:`maxent_train.models.ClassifierBlock` ``convs``).
    num_classes : int

    Raises
    ------
    MaxentError
        A name that is no ``Conv2d`` of the model, or one without ``num_classes`` outputs.
    """
    modules = dict(model.named_modules())
    for name in convs:
        conv = modules.get(name)
        if not isinstance(conv, nn.Conv2d):
            raise MaxentError(f"model {type(model).__name__}: {name!r} is not a Conv2d of the model (its classifier "
                              f"declaration is wrong)")
        if conv.out_channels != num_classes:
            raise MaxentError(f"model {type(model).__name__}: classifier {name} has {conv.out_channels} outputs, "
                              f"expected {num_classes} to grow an abstention channel")
        old_w = conv.weight.detach()
        with torch.no_grad():
            weight = nn.init.kaiming_normal_(torch.zeros((num_classes + 1, *old_w.shape[1:]), dtype=old_w.dtype))
            weight = weight.to(old_w.device)
            weight[:num_classes] = old_w
            conv.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
            if conv.bias is not None:
                bias = torch.zeros(num_classes + 1, dtype=conv.bias.dtype, device=conv.bias.device)
                bias[:num_classes] = conv.bias.detach()
                conv.bias = nn.Parameter(bias, requires_grad=conv.bias.requires_grad)
        conv.out_channels = num_classes + 1
    tagged: Any = model     # a plain attribute (nn.Module's setattr is typed for tensors and modules)
    tagged.num_classes = num_classes + 1      # the output count, as create_model(num_classes=C + 1) sets it
