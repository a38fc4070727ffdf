"""PartitionSpec -> FRUGAL parameter groups: which parameters keep AdamW state.

Eligible parameters are the Linear weights inside the transformer blocks (see `find_blocks`). The
rest follow the spec's flags: embeddings (every `nn.Embedding`, positional ones too) follow
`embeddings_statefull`; the LM head follows `lm_head_statefull` (a head tied to the embeddings is
state-full if either flag says so); norm weights and all biases follow `norms_statefull`; anything
else stays state-full.

Static placements (`layers`, or `top`, `bottom`, `spread` with `density`) make all eligible weights
of the chosen layers state-full and the other layers' eligible weights state-free, in at most two
groups keyed `statefull`, which survive DeepSpeed ZeRO flattening. `rotate` (and column mode) put
every eligible weight into one `{"rotate": True}` group and leave the choice to the optimizer.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from autotune import schema
from autotune.config import PartitionSpec
from autotune.errors import ConfigError
from autotune.optim.blocks import find_blocks, is_norm, linear_weights
from autotune.optim.rotation import active_count


def choose_layers(n_layers: int, spec: PartitionSpec) -> list[int]:
    """The state-full layer indices of a static placement, ascending.

    Raises:
        ConfigError: when `spec.layers` names a layer the model does not have.
    """
    if spec.layers is not None:
        missing = sorted(i for i in set(spec.layers) if not 0 <= i < n_layers)
        if missing:
            raise ConfigError(f"layers: the model has layers 0..{n_layers - 1}, not {missing}", source="partition")
        return sorted(set(spec.layers))
    k = active_count(n_layers, spec.density)
    if spec.placement == "bottom":
        return list(range(k))
    if spec.placement == "top":
        return list(range(n_layers - k, n_layers))
    # spread: the centres of k equal slices, so one chosen layer lands mid-model, not at an end
    return [int((i + 0.5) * n_layers / k) for i in range(k)]


def _non_eligible_statefull(model: nn.Module, spec: PartitionSpec) -> dict[int, bool]:
    """Parameter id -> state-full, for every parameter by the spec's embedding/head/norm flags."""
    # a plain nn.Module has no get_output_embeddings; a Hugging Face model without a head returns None
    head = getattr(model, "get_output_embeddings", lambda: None)()
    statefull: dict[int, bool] = {}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if module is head:
                flag = spec.lm_head_statefull
            elif isinstance(module, nn.Embedding):
                flag = spec.embeddings_statefull
            elif is_norm(module) or name == "bias":
                flag = spec.norms_statefull
            else:
                flag = True
            # a tied head and embedding is one tensor: keep state if either role asks for it
            statefull[id(param)] = statefull.get(id(param), False) or flag
    return statefull


def _groups(pairs: Iterable[tuple[dict[str, Any], list[nn.Parameter]]]) -> list[dict[str, Any]]:
    return [{**key, "params": params} for key, params in pairs if params]


def partition(model: nn.Module, spec: PartitionSpec) -> list[dict[str, Any]]:
    """Parameter groups for `autotune.optim.FRUGAL` from a partition spec.

    Args:
        model: a decoder with a repeated block list (any Hugging Face causal LM).
        spec: which layers (or what density, placed how) keep AdamW state.

    Returns:
        Groups in model order, each with `params` and either `statefull` or `rotate: True`.

    Raises:
        ConfigError: (a ValueError) for an invalid spec or a model without a block list.
    """
    problems = schema.validate(spec)
    if problems:
        raise ConfigError(problems, source="partition")
    blocks = find_blocks(model)
    per_layer = [linear_weights(block) for block in blocks]
    rotating = spec.rotates
    chosen = set() if rotating else set(choose_layers(len(blocks), spec))
    eligible = {id(p): i for i, weights in enumerate(per_layer) for p in weights}
    flags = _non_eligible_statefull(model, spec)
    rotate: list[nn.Parameter] = []
    full: list[nn.Parameter] = []
    free: list[nn.Parameter] = []
    for param in model.parameters():
        if id(param) in eligible:
            statefull = None if rotating else eligible[id(param)] in chosen
        else:
            statefull = flags[id(param)]
        (rotate if statefull is None else full if statefull else free).append(param)
    return _groups([({"rotate": True}, rotate), ({"statefull": True}, full), ({"statefull": False}, free)])


def rotates(groups: Iterable[dict[str, Any]] | torch.optim.Optimizer) -> bool:
    """Whether a partition (or an optimizer's groups) rotates, so needs one tensor per block (no ZeRO)."""
    if isinstance(groups, torch.optim.Optimizer):
        groups = groups.param_groups
    return any(group.get("rotate", False) for group in groups)
