"""A test-only ComfyUI node pack (never shipped: tests/ is outside the registry zip) for the schema-driven bad-input
test (tests/comfyui/test_bad_inputs_every_node.py): one node that outputs a bad value of a kind for an IMAGE or
LATENT input, through an output that links to any input type, as a reroute or any-switch node of another pack
would. Linked values are never range-checked by ComfyUI, so they reach the node under test as they are."""

import torch

SIDE = 64


class AnyType(str):
    """An output type that ComfyUI's link validation takes for any input type (the `__ne__` convention)."""

    def __ne__(self, other: object) -> bool:
        return False


def _image(batch: int = 1, channels: int = 3) -> torch.Tensor:
    return torch.full((batch, SIDE, SIDE, channels), 0.5)


BAD_VALUES = {
    "IMAGE: empty batch": lambda: torch.zeros(0, SIDE, SIDE, 3),
    "IMAGE: NaN": lambda: _image().index_fill_(1, torch.tensor([3]), float("nan")),
    "IMAGE: infinity": lambda: _image().index_fill_(2, torch.tensor([5]), float("inf")),
    "IMAGE: values above 1": lambda: _image() * 300,
    "IMAGE: 4 channels": lambda: _image(channels=4),
    "IMAGE: no batch axis": lambda: _image()[0],
    "IMAGE: a batch of 2": lambda: _image(batch=2),
    "LATENT: NaN": lambda: {"samples": torch.full((1, 4, SIDE // 8, SIDE // 8), float("nan"))},
    "LATENT: no samples": lambda: {},
    "LATENT: 3 channels": lambda: {"samples": torch.zeros(1, 3, SIDE // 8, SIDE // 8)},
    "LATENT: empty batch": lambda: {"samples": torch.zeros(0, 4, SIDE // 8, SIDE // 8)},
}


class GoTTestBadValue:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (sorted(BAD_VALUES),)}}

    RETURN_TYPES = (AnyType("*"),)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, kind: str):
        return (BAD_VALUES[kind](),)


NODE_CLASS_MAPPINGS = {"GoTTestBadValue": GoTTestBadValue}
