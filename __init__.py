"""comfyui-got: GoT (Generation Chain-of-Thought) nodes for ComfyUI."""

from comfy_api.latest import ComfyExtension, io


class GoTExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        from .nodes import all_nodes

        return all_nodes()


async def comfy_entrypoint() -> GoTExtension:
    return GoTExtension()
