"""The shared encoder: any segmentation-models-pytorch encoder, checked once by a dummy pass.

The dummy pass (64 px, eval mode so BatchNorm statistics do not move, then a backward) serves two
purposes:

- find the last convolution the encoder runs whose weight reaches the returned features: GradNorm
  measures gradient norms at its weight. In timm ResNets with a projection shortcut in the last block
  (``tu-resnet10t``) that is the shortcut's 1x1 convolution, which runs after the main branch;
- drop submodules that never run and whose parameters get no gradient. smp's own ResNets keep their
  deepest stage even with ``depth=4``; left in place such parameters would cost memory, be averaged
  and sent by FedAvg for nothing, and make DDP complain about unused parameters. Modules that run
  but whose output is discarded (some timm feature extractors run every block) are kept: replacing
  them could break the shapes further on.
"""

from __future__ import annotations

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
        # Imported here: smp pulls in timm (and timm wandb), which `--help` and the parsers never need.
        import segmentation_models_pytorch as smp

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
    ran: list[str] = []  # every module whose forward was called, in the order they finished
    hooks = [
        module.register_forward_hook(lambda module, args, output: ran.append(names[module]))
        for module in encoder.modules()
    ]
    was_training = encoder.training
    encoder.eval()
    try:
        # Gradients on even when the model is built under torch.no_grad() (e.g. loading it for inference).
        with torch.enable_grad():
            features = encoder(torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE))
            sum(f.float().mean() for f in features[1:]).backward()
    finally:
        for hook in hooks:
            hook.remove()
        encoder.train(was_training)

    # The last convolution whose weight reaches the returned features (some timm feature extractors
    # run layers past the deepest feature they return; those get no gradient).
    convs = [n for n in ran if isinstance(encoder.get_submodule(n), nn.Conv2d)]
    reached = [n for n in convs if encoder.get_submodule(n).weight.grad is not None]
    unused = {id(p) for p in encoder.parameters() if p.grad is None}
    encoder.zero_grad(set_to_none=True)
    if not reached:
        raise ValueError(f"encoder {type(encoder).__name__} runs no Conv2d; GradNorm needs a last shared conv layer")

    # A container may be iterated rather than called: it counts as run when any module inside it ran.
    called = {".".join(n.split(".")[:i]) for n in ran for i in range(1, n.count(".") + 2)}
    # Replace the outermost modules that never ran and whose parameters got no gradient. Modules that
    # ran are kept even if their output goes unused: replacing them could change shapes further on.
    replaced: list[str] = []
    for name, module in list(encoder.named_modules()):
        if not name or name in called or any(name.startswith(r + ".") for r in replaced):
            continue
        params = list(module.parameters())
        if params and all(id(p) in unused for p in params):
            parent, _, child = name.rpartition(".")
            setattr(encoder.get_submodule(parent), child, nn.Identity())
            replaced.append(name)
    return reached[-1]
