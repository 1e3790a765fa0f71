"""GoT's special tokens (docs/ALGORITHM.md §3), resolved by name and checked against the released ids."""

from __future__ import annotations

from dataclasses import dataclass
from ..errors import GoTError

BOI = "<|im_gen_start|>"
EOI = "<|im_gen_end|>"
IMAGE_QUERY_TOKENS = tuple(f"<|im_gen_{i:04d}|>" for i in range(64))
GOT_TOKENS = (BOI, EOI, *IMAGE_QUERY_TOKENS)

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
OBJECT_REF_START = "<|object_ref_start|>"
OBJECT_REF_END = "<|object_ref_end|>"
BOX_START = "<|box_start|>"
BOX_END = "<|box_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"

EXPECTED_IDS = {
    ENDOFTEXT: 151643, IM_START: 151644, IM_END: 151645, OBJECT_REF_START: 151646, OBJECT_REF_END: 151647,
    BOX_START: 151648, BOX_END: 151649, VISION_START: 151652, VISION_END: 151653, IMAGE_PAD: 151655,
    BOI: 151665, EOI: 151666, **{name: 151667 + i for i, name in enumerate(IMAGE_QUERY_TOKENS)},
}
EMBEDDING_ROWS = 151936


class GoTTokenizerError(GoTError):
    """The tokenizer does not carry GoT's tokens at GoT's ids."""


@dataclass(frozen=True)
class GoTTokenIds:
    boi: int
    eoi: int
    image_queries: tuple[int, ...]
    endoftext: int
    im_end: int
    vision_start: int
    vision_end: int
    image_pad: int

    @property
    def stop_ids(self) -> tuple[int, int, int]:
        """Reasoning stops on these (docs/ALGORITHM.md §5)."""
        return (self.boi, self.vision_start, self.endoftext)


def add_got_tokens(tokenizer) -> None:
    """Add GoT's 66 tokens as special tokens, in GoT's order, unless the tokenizer already has them."""
    missing = [t for t in GOT_TOKENS if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)


def resolve_got_tokens(tokenizer) -> GoTTokenIds:
    """Look every token up by name; refuse a tokenizer whose ids differ from the released ones."""
    wrong = []
    for name, expected in EXPECTED_IDS.items():
        found = tokenizer.convert_tokens_to_ids(name)
        if found != expected or tokenizer.convert_ids_to_tokens(expected) != name:
            wrong.append(f"{name}: expected id {expected}, tokenizer has {found}")
    if wrong:
        raise GoTTokenizerError(
            "this tokenizer does not match GoT (docs/ALGORITHM.md §3): " + "; ".join(wrong[:5])
            + (f" (and {len(wrong) - 5} more)" if len(wrong) > 5 else "")
            + ". Use the tokenizer of Qwen2.5-VL-3B-Instruct, to which GoT's tokens are added in order.")
    ids = tokenizer.convert_tokens_to_ids
    return GoTTokenIds(
        boi=ids(BOI), eoi=ids(EOI), image_queries=tuple(ids(list(IMAGE_QUERY_TOKENS))),
        endoftext=ids(ENDOFTEXT), im_end=ids(IM_END), vision_start=ids(VISION_START),
        vision_end=ids(VISION_END), image_pad=ids(IMAGE_PAD),
    )
