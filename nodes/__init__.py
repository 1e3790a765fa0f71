"""ComfyUI adapters over got_backend: one module per node family, each exporting NODES.

The node modules import ComfyUI (`comfy_api`, `comfy`, `folder_paths`), so they are imported inside
`all_nodes()`, never when this package is imported (pytest and CI import it without ComfyUI).
"""

from __future__ import annotations


def all_nodes() -> list[type]:
    """Every node class of the pack, in the order the node menu lists them."""
    from . import (chain, conditioner, guider, judge, layout, mllm_loader, plan_editor, reasoner, reference,
                   reflect, schedule, thinker, unet_loader)

    families = (mllm_loader, thinker, reasoner, plan_editor, chain, layout, unet_loader, reference, conditioner, guider,
                schedule, judge, reflect)
    return [node for family in families for node in family.NODES]
