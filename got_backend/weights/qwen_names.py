"""Qwen2.5-VL parameter names as the installed transformers spells them.

transformers 4.49 (GoT's training version) names the decoder `model.…` and the vision tower `visual.…`;
transformers >= 4.52 names them `model.language_model.…` and `model.visual.…`. The installed spelling is read
off a meta-device model (no memory, no weights), so no version table has to be kept here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from .shapes import meta_model, state_shapes
from ..errors import GoTError

# Every spelling a Qwen2.5-VL checkpoint may use for each part, the longest (most specific) first.
TEXT_ROOTS = ("model.language_model.", "model.")
VISION_ROOTS = ("model.visual.", "visual.")
LM_HEAD_ROOTS = ("lm_head.",)


class UnsupportedTransformersError(GoTError):
    """The installed transformers lays Qwen2.5-VL's parameters out in a way GoT does not know."""


@dataclass(frozen=True)
class QwenNames:
    """The installed model's names and shapes (shapes only when built from the real config)."""

    text_root: str
    vision_root: str
    lm_head_root: str
    shapes: dict[str, torch.Size] | None

    @property
    def embed_key(self) -> str:
        return f"{self.text_root}embed_tokens.weight"

    @property
    def lm_head_key(self) -> str:
        return f"{self.lm_head_root}weight"

    def installed_name(self, key: str) -> str | None:
        """`key` in the installed spelling, or None if it belongs to no part of Qwen2.5-VL."""
        for roots, installed in ((VISION_ROOTS, self.vision_root), (LM_HEAD_ROOTS, self.lm_head_root),
                                 (TEXT_ROOTS, self.text_root)):
            for root in roots:
                if key.startswith(root):
                    return installed + key[len(root):]
        return None


def qwen_names(config=None) -> QwenNames:
    """Names (and, given the model's config, shapes) of the installed `Qwen2_5_VLForConditionalGeneration`."""
    if config is None:
        return _default_names()
    return _names_of(_meta_state_shapes(config), with_shapes=True)


def load_qwen_config(folder: str | Path, *, tie_word_embeddings: bool | None = None):
    """The Qwen2.5-VL config in `folder`, optionally with `tie_word_embeddings` overridden."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    if tie_word_embeddings is not None:
        set_tie_word_embeddings(config, tie_word_embeddings)
    return config


def set_tie_word_embeddings(config, tie: bool) -> None:
    """Set the flag everywhere a transformers version may read it (top level and, pre-v5, text_config)."""
    config.tie_word_embeddings = tie
    text_config = getattr(config, "text_config", None)
    if text_config is not None and hasattr(text_config, "tie_word_embeddings"):
        text_config.tie_word_embeddings = tie


@lru_cache(maxsize=1)
def _default_names() -> QwenNames:
    from transformers import Qwen2_5_VLConfig

    return _names_of(_meta_state_shapes(Qwen2_5_VLConfig()), with_shapes=False)


def _meta_state_shapes(config) -> dict[str, torch.Size]:
    from transformers import Qwen2_5_VLForConditionalGeneration

    return state_shapes(meta_model(Qwen2_5_VLForConditionalGeneration._from_config, config).state_dict())


def _names_of(shapes: dict[str, torch.Size], with_shapes: bool) -> QwenNames:
    def root_of(suffix: str) -> str:
        for name in shapes:
            if name.endswith(suffix):
                return name[: -len(suffix)]
        import transformers

        version = transformers.__version__
        below = ".".join(version.split(".")[:2])
        raise UnsupportedTransformersError(
            f"transformers {version} names no parameter of Qwen2_5_VLForConditionalGeneration *{suffix}, so GoT "
            "cannot tell where its weights go (got_backend/weights/qwen_names.py reads the names off the installed "
            "model): install an earlier transformers, one GoT is tested with (4.49, the floor of requirements.txt, "
            f"to the newest release of its time), e.g. pip install \"transformers<{below}\"")

    return QwenNames(text_root=root_of("embed_tokens.weight"), vision_root=root_of("patch_embed.proj.weight"),
                     lm_head_root=root_of("lm_head.weight") + "lm_head.",
                     shapes=shapes if with_shapes else None)
