"""Batch norm folded into the convolution before it, for inference with torch.

In eval mode a batch norm is a per-channel scale and shift, which the preceding convolution can
absorb: one pass over the activations fewer per block. ONNX Runtime does this itself when it
optimises a graph; for the torch path we do it here. Only for inference: a folded network has
no batch norm left to train.
"""

from __future__ import annotations

TOLERANCE = 1e-4  # max |Δ logit| on a random input; above it the network is left as it was


def fold_batch_norm(network, in_channels: int = 3, side: int = 64):
    """Fold every batch norm that takes a convolution's output (and nothing else's) into that
    convolution; timm's batch norm with activation keeps its activation.

    The pairs are found by running the network once on a random input and watching which
    convolution's output each batch norm receives, so any architecture works; a convolution
    or batch norm called more than once is left alone. The folded network is checked against
    the original on that input and the original is returned if they differ.

    Parameters
    ----------
    network : torch.nn.Module
        In eval mode; changed in place when folding succeeds.
    in_channels : int
        Channels of the network's input.
    side : int
        Height and width of the probe input (a multiple of the network's stride).

    Returns
    -------
    torch.nn.Module
        The folded network (or the original one).
    int
        How many batch norms were folded.
    """
    import copy

    import torch

    if isinstance(network, torch.jit.ScriptModule) or network.training:
        return network, 0
    names = {m: n for n, m in network.named_modules()}
    outputs, calls, pairs = {}, {}, []

    def after_conv(module, _inputs, output):
        calls[module] = calls.get(module, 0) + 1
        outputs[id(output)] = (module, output)  # holds the tensor, so its id is not reused

    def before_bn(module, inputs):
        calls[module] = calls.get(module, 0) + 1
        source = outputs.get(id(inputs[0]))
        if source is not None:
            pairs.append((source[0], module))

    hooks = []
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):  # timm's Conv2dSame too; the check below catches odd ones
            hooks.append(module.register_forward_hook(after_conv))
        elif isinstance(module, torch.nn.BatchNorm2d):
            hooks.append(module.register_forward_pre_hook(before_bn))
    param = next(network.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    probe = torch.randn(1, in_channels, side, side, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        with torch.no_grad():
            before = network(probe).float()
    finally:
        for hook in hooks:
            hook.remove()
    outputs.clear()
    pairs = [(c, b) for c, b in pairs if calls[c] == 1 and calls[b] == 1 and _replacement(b) is not None]
    if not pairs:
        return network, 0
    original = copy.deepcopy(network)
    with torch.no_grad():
        for conv, bn in pairs:
            _fold(conv, bn)
            _set(network, names[bn], _replacement(bn))
        after = network(probe).float()
    if after.shape != before.shape or (after - before).abs().max().item() > TOLERANCE * max(1.0, before.abs().max()):
        return original, 0
    return network, len(pairs)


def _replacement(bn):
    """What is left of a batch norm once folded: nothing, or timm's dropout and activation."""
    import torch

    if type(bn) is torch.nn.BatchNorm2d:
        return torch.nn.Identity()
    if hasattr(bn, "act") and hasattr(bn, "drop") and isinstance(bn.act, torch.nn.Module):
        return torch.nn.Sequential(bn.drop, bn.act)
    return None


def _fold(conv, bn) -> None:
    import torch

    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = (bn.bias if bn.affine else 0) - bn.running_mean * scale
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    conv.bias = torch.nn.Parameter(bias * scale + shift)


def _set(network, name: str, module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(network.get_submodule(parent) if parent else network, leaf, module)
