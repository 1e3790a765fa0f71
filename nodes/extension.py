"""The V3 extension object ComfyUI asks this pack for."""

from comfy_api.latest import ComfyExtension, io

from . import all_nodes


class GoTExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return all_nodes()
