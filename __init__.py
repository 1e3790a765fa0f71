"""comfyui-got: GoT (Generation Chain-of-Thought) nodes for ComfyUI.

ComfyUI calls `comfy_entrypoint`; ComfyUI's own modules are imported only then, so this package can be
imported (e.g. by pytest collecting the repository) without ComfyUI. WEB_DIRECTORY is the frontend extension
(the plan editor); ComfyUI serves it for a V3 pack too.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes.extension import GoTExtension

    return GoTExtension()
