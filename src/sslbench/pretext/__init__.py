"""Pretext tasks on top of any SSL method: a head predicts what a transform's op did.

The study used LoRot-I and DCL's region confusion as augmentations only; their papers use
them as pretext tasks, where a head learns to tell what the transformation did and its loss
joins the training loss. ``pretext=lorot`` or ``pretext=dcl`` adds that head to any method:

    total loss = method loss + pretext.weight * pretext loss

A task reads the labels that its op (``lorot``, ``region_confusion``) returns beside each
view, and the backbone's feature maps of those views from the method's own forward pass
(no second pass, except DCL's one unshuffled view). A new task is one module (a
:class:`~sslbench.pretext.base.PretextTask`), one YAML file in ``conf/pretext/`` and one line
in :data:`PRETEXTS` and :data:`PRETEXT_OPS`.

This module is torch-free: the config validator checks a run's pretext against its
transform before torch is imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sslbench.transforms.params import (
    POINTWISE_OPS,
    execution_order,
    parse_pipeline_spec,
    view_specs,
)

if TYPE_CHECKING:
    from sslbench.pretext.base import PretextTask

#: Pretext task name (conf/pretext/NAME.yaml) → "module:Class" of its head module.
PRETEXTS: dict[str, str] = {
    "lorot": "sslbench.pretext.lorot:LoRot",
    "dcl": "sslbench.pretext.dcl:DCL",
}

#: The op whose labels each task reads.
PRETEXT_OPS: dict[str, str] = {"lorot": "lorot", "dcl": "region_confusion"}

#: Transforms shipped with each task's op, for the error message.
TRANSFORMS_WITH_OP: dict[str, str] = {
    "lorot": "lorot, baseline_lorot",
    "region_confusion": "dcl, baseline_dcl",
}


def pretext_name(pretext: Mapping[str, Any] | None) -> str | None:
    """The task's name, or None for ``pretext=none`` (and for configs saved before pretext
    tasks existed, which have no ``pretext`` section)."""
    name = (pretext or {}).get("name")
    return None if name in (None, "none") else str(name)


def check_pretext(pretext: Mapping[str, Any] | None, transform: Mapping[str, Any]) -> None:
    """Raise a one-line ValueError unless the transform can serve the pretext task: every
    global-view variant has the task's op, and only pointwise ops (colour, normalize) run
    after it, so that the op's label still describes the finished view."""
    name = pretext_name(pretext)
    if name is None:
        return
    if name not in PRETEXTS:
        raise ValueError(f"unknown pretext '{name}'; valid: none, {', '.join(sorted(PRETEXTS))}")
    op = PRETEXT_OPS[name]
    for spec in view_specs(transform):
        order = execution_order(parse_pipeline_spec(spec))
        entries = [entry for entry, step_op, _ in order if step_op == op]
        if not entries:
            raise ValueError(
                f"pretext={name} reads the labels of the {op} op, which transform "
                f"'{transform.get('name')}' does not have; use transform="
                f"{TRANSFORMS_WITH_OP[op].replace(', ', ' or ')}, or add the op "
                f"(transform.ops.{op})"
            )
        after = order[[e for e, _, _ in order].index(entries[0]) + 1 :]
        moving = [entry for entry, step_op, _ in after if step_op not in POINTWISE_OPS]
        if moving:
            raise ValueError(
                f"pretext={name}: transform.ops.{moving[0]} runs after the {op} op and moves "
                f"or mixes pixels, so the op's label would no longer describe the view; list "
                f"{entries[0]} after it (only {', '.join(sorted(POINTWISE_OPS))} may follow)"
            )


def create_pretext(
    pretext: Mapping[str, Any] | None, op_params: list[Any], **kwargs: Any
) -> PretextTask | None:
    """The head module of the run's pretext task (None for ``pretext=none``). ``op_params``:
    the parameters of the task's op in each global-view pipeline (the task checks that they
    agree where its head depends on them: LoRot's variant, DCL's grid); ``kwargs`` go to its
    constructor (feature_dim, backbone, view_size). The transform was checked against the
    task when the config was resolved (:func:`check_pretext`)."""
    name = pretext_name(pretext)
    if name is None:
        return None
    module, cls = PRETEXTS[name].split(":")
    task = getattr(importlib.import_module(module), cls)
    return task(dict(pretext or {}), op_params=op_params, **kwargs)


__all__ = ["PRETEXTS", "PRETEXT_OPS", "check_pretext", "create_pretext", "pretext_name"]
