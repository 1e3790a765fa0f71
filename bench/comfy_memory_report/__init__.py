"""A bench-only ComfyUI node (never shipped: bench/ is outside the registry zip) for bench/full_size_path.py: what
ComfyUI's model management believes each loaded model weighs against the real bytes of its tensors."""

import json

import comfy.model_management


class AnyType(str):
    """An input type that ComfyUI's link validation takes for any output (the `__ne__` convention)."""

    def __ne__(self, other: object) -> bool:
        return False


def real_bytes(module) -> int:
    """Each parameter and buffer once, plus the KV caches a GoT model keeps on its weights."""
    cache = module.cache_bytes() if hasattr(module, "cache_bytes") else 0
    return sum(p.nbytes for p in module.parameters()) + sum(b.nbytes for b in module.buffers()) + cache


class GoTBenchMemoryReport:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"after": (AnyType("*"),)}}

    RETURN_TYPES = ()
    FUNCTION = "report"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def report(self, after):
        rows = [{"model": type(loaded.model.model).__name__, "model_size": loaded.model.model_size(),
                 "loaded_size": loaded.model.loaded_size(), "real_bytes": real_bytes(loaded.model.model)}
                for loaded in comfy.model_management.current_loaded_models if loaded.model is not None]
        return {"ui": {"text": [json.dumps(rows)]}}


NODE_CLASS_MAPPINGS = {"GoTBenchMemoryReport": GoTBenchMemoryReport}
