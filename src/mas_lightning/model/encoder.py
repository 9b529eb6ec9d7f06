"""The shared encoder: any segmentation-models-pytorch encoder, checked once by a dummy pass.

The dummy pass (64 px, eval mode so BatchNorm statistics do not move) serves two purposes:

- find the last convolution the encoder runs: GradNorm measures gradient norms at its weight;
- drop submodules whose parameters get no gradient. smp's own ResNets keep their deepest stage even
  with ``depth=4``; left in place such parameters would cost memory, be averaged and sent by FedAvg
  for nothing, and make DDP complain about unused parameters.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

PROBE_SIZE = 64
"""Side of the dummy image: divisible by 32, so every smp encoder depth (3 to 5) accepts it."""


def build_encoder(name: str, depth: int, weights: str | None) -> tuple[nn.Module, str]:
    """Build an smp encoder and find its last convolution.

    Args:
        name: smp encoder name (``"resnet34"``, ``"tu-resnet10t"``, ...).
        depth: number of stages (3 to 5); the deepest feature has stride ``2 ** depth``.
        weights: pretrained weights smp should load (e.g. ``"imagenet"``), None for random init.

    Returns:
        The encoder and the module name (for ``get_submodule``) of its last convolution.

    Raises:
        ValueError: unknown encoder name or unsupported depth, with what is accepted.
    """
    if not 3 <= depth <= 5:
        raise ValueError(f"encoder_depth must be 3, 4 or 5, got {depth}")
    try:
        encoder = smp.encoders.get_encoder(name, in_channels=3, depth=depth, weights=weights)
    except (KeyError, RuntimeError) as error:  # smp: KeyError for its own names; timm: RuntimeError
        raise ValueError(
            f"unknown encoder {name!r}: use a name from segmentation_models_pytorch.encoders.get_encoder_names() "
            f"or 'tu-<timm model name>' ({type(error).__name__})"
        ) from None
    last = _prune_and_find_last_conv(encoder)
    return encoder, last


def _prune_and_find_last_conv(encoder: nn.Module) -> str:
    names = {module: name for name, module in encoder.named_modules()}
    ran: list[str] = []
    hooks = [
        module.register_forward_hook(lambda module, args, output: ran.append(names[module]))
        for module in encoder.modules()
        if isinstance(module, nn.Conv2d)
    ]
    was_training = encoder.training
    encoder.eval()
    try:
        features = encoder(torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE))
        sum(f.float().mean() for f in features[1:]).backward()
    finally:
        for hook in hooks:
            hook.remove()
        encoder.train(was_training)
    if not ran:
        raise ValueError(f"encoder {type(encoder).__name__} runs no Conv2d; GradNorm needs a last shared conv layer")

    unused = {id(p) for p in encoder.parameters() if p.grad is None}
    encoder.zero_grad(set_to_none=True)
    # Replace the outermost modules whose every parameter went unused (their forward is never called);
    # named_modules lists parents before children, so a replaced module's children are skipped.
    replaced: list[str] = []
    for name, module in list(encoder.named_modules()):
        params = list(module.parameters())
        if not name or not params or any(name.startswith(r + ".") for r in replaced):
            continue
        if all(id(p) in unused for p in params):
            parent, _, child = name.rpartition(".")
            setattr(encoder.get_submodule(parent), child, nn.Identity())
            replaced.append(name)
    return ran[-1]
