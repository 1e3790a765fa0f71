"""Reading Qwen2.5-VL's parameter names off the installed transformers: the installed layout is found, and a layout
GoT does not know (here a real model without the vision tower's names) is a GoTError saying which transformers is
installed and which release to install instead."""

from __future__ import annotations

import pytest
import transformers
from transformers import Qwen2Config, Qwen2ForCausalLM

from got_backend.errors import GoTError
from got_backend.weights.qwen_names import TEXT_ROOTS, VISION_ROOTS, UnsupportedTransformersError, _names_of, qwen_names
from got_backend.weights.shapes import meta_model, state_shapes


def test_the_installed_layout_is_read_off_the_model() -> None:
    names = qwen_names()
    assert names.text_root in TEXT_ROOTS and names.vision_root in VISION_ROOTS and names.lm_head_root == "lm_head."


def test_an_unknown_layout_is_a_got_error_naming_transformers_and_the_fix() -> None:
    config = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    text_only = state_shapes(meta_model(Qwen2ForCausalLM, config).state_dict())  # no patch_embed: no vision tower
    with pytest.raises(UnsupportedTransformersError) as caught:
        _names_of(text_only, with_shapes=False)
    assert isinstance(caught.value, GoTError)
    message = str(caught.value)
    version = transformers.__version__
    assert message.startswith(f"transformers {version} names no parameter of Qwen2_5_VLForConditionalGeneration "
                              "*patch_embed.proj.weight")
    assert f'pip install "transformers<{".".join(version.split(".")[:2])}"' in message
