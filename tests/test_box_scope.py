"""Which boxes a turn draws when the chain holds <|im_end|> (docs/ALGORITHM.md §7): the released loop calls
`generate` with Qwen's generation config, whose eos list holds <|im_end|>; generation stops there, the loop
generates on, and the layout reads only the text of the last `generate` call. The tiny MLLM is steered to write
a chain with <|im_end|> in the middle, and the released loop is run with transformers' own `generate`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig, LogitsProcessorList

from got_backend.pipeline import GoTPipeline, ReasoningSettings, RenderSettings
from got_backend.reasoning.prompts import chat_messages, instruction
from got_backend.reasoning.tokens import BOI, IM_END
from got_backend.ssgm.chain import parse_chain
from got_backend.ssgm.latents import spatial_latent, vae_mode_encoder
from tests.steering import ForceToken

REF, REF_END, BOX, BOX_END = "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>"
BEFORE = f"A {REF}ball{REF_END}{BOX}(0,0),(500,500){BOX_END} (red).{IM_END}"
AFTER = f" Then a {REF}cube{REF_END}{BOX}(400,300),(999,999){BOX_END} (blue).{BOI}"
PROMPT = "a red ball and a blue cube"
SMALL = RenderSettings(width=64, height=64, steps=2)


@pytest.fixture(scope="module")
def pipeline(tiny_models_dir: Path) -> GoTPipeline:
    return GoTPipeline.from_models_dir(tiny_models_dir, device="cpu")


def ids_of(pipeline: GoTPipeline, text: str) -> list[int]:
    return pipeline.mllm.tokenizer(text, add_special_tokens=False)["input_ids"]


def writes(pipeline: GoTPipeline, text: str) -> ForceToken:
    """The steering that makes the tiny model write `text` as its first new tokens."""
    return ForceToken(1, ids_of(pipeline, text))


def released_loop(pipeline: GoTPipeline, folder: Path, steering: ForceToken) -> tuple[list[int], list[str]]:
    """The released reasoning loop: `generate` with the Qwen folder's generation config (plus GoT's stops),
    called again on the whole sequence until the last token is one of GoT's stops. Returns the new tokens and
    the text of each `generate` call."""
    mllm = pipeline.mllm
    config = GenerationConfig.from_pretrained(folder, local_files_only=True)
    chat = mllm.processor.apply_chat_template(chat_messages(instruction(PROMPT, "t2i"), False), tokenize=False,
                                              add_generation_prompt=True)
    ids = mllm.processor(text=[chat], return_tensors="pt")["input_ids"]
    start, calls = ids.shape[1], []
    eos = list(config.eos_token_id) + [mllm.tokens.boi, mllm.tokens.vision_start]
    with torch.no_grad():
        while ids[0, -1].item() not in mllm.tokens.stop_ids:
            out = mllm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config,
                                      eos_token_id=eos, max_new_tokens=64, logits_processor=LogitsProcessorList([steering]))
            calls.append(mllm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=False))
            ids = out
    return ids[0, start:].tolist(), calls


def boxes(chain) -> list[tuple]:
    return [(o.phrase, o.box, o.color) for o in chain.colored]


def test_the_generation_config_eos_list_breaks_the_layout_at_im_end(pipeline: GoTPipeline,
                                                                   tiny_mllm_folder: Path) -> None:
    assert pipeline.mllm.layout_breaks == (IM_END,)  # <|endoftext|>, also listed, already ends a turn


def test_a_chain_with_im_end_inside_draws_the_boxes_of_its_last_generate_call(pipeline: GoTPipeline,
                                                                              tiny_mllm_folder: Path) -> None:
    theirs, calls = released_loop(pipeline, tiny_mllm_folder, writes(pipeline, BEFORE + AFTER))
    assert calls == [BEFORE, AFTER]  # generate stopped at <|im_end|>; the loop generated on
    ours = pipeline.mllm.reason(PROMPT, max_new_tokens=64, logits_processor=[writes(pipeline, BEFORE + AFTER)])
    assert list(ours.token_ids) == theirs and ours.stop == "boi" and ours.text == BEFORE + AFTER
    chain = parse_chain(ours.text, drawn_after=ours.layout_breaks)
    assert boxes(chain) == boxes(parse_chain(calls[-1])) == [("cube", (400, 300, 999, 999), "blue")]
    assert [o.phrase for o in chain.objects] == ["ball", "cube"]  # read (listed), but only the last call drawn


def test_the_spatial_latent_is_the_reference_one_and_the_image_differs(pipeline: GoTPipeline) -> None:
    result = pipeline.generate(PROMPT, render=SMALL, reasoning=ReasoningSettings(
        max_new_tokens=64, logits_processor=(writes(pipeline, BEFORE + AFTER),)))
    turn = result.turns[0]
    cond, chain = pipeline.conditioning(turn, None, 64, 64)
    encode = vae_mode_encoder(pipeline.vae)
    reference = spatial_latent(parse_chain(AFTER), encode, 64, 64)
    whole_turn = spatial_latent(parse_chain(turn.text), encode, 64, 64)
    assert torch.allclose(cond.spatial, reference, atol=1e-6)
    assert (cond.spatial - whole_turn).abs().max() > 0.05  # the ball would change the guidance
    assert boxes(result.renders[0].chain) == boxes(parse_chain(AFTER))


def test_a_written_chain_read_back_keeps_the_scope(pipeline: GoTPipeline) -> None:
    """The chain file or an edited chain holds the same text: the same boxes are drawn (no boxes come back)."""
    replay = pipeline.render_chain(PROMPT, BEFORE + AFTER, render=SMALL, reasoning=ReasoningSettings(max_new_tokens=1))
    assert replay.turns[0].edited and boxes(replay.renders[0].chain) == boxes(parse_chain(AFTER))
    recoloured = replay.renders[0].chain.with_object(1, color="green")
    assert boxes(recoloured) == [("cube", (400, 300, 999, 999), "green")]


def test_a_start_the_user_wrote_and_the_model_finished_draws_the_whole_turn(pipeline: GoTPipeline) -> None:
    """The deliberate deviation: the user's start (here ending with <|im_end|>) is part of the plan."""
    turn = pipeline.mllm.reason(PROMPT, assistant_prefix=BEFORE, max_new_tokens=64,
                                logits_processor=[writes(pipeline, AFTER)])
    assert turn.text == BEFORE + AFTER and turn.new_tokens == len(ids_of(pipeline, AFTER))
    assert turn.layout_breaks == ()
    assert [o.phrase for o in parse_chain(turn.text, drawn_after=turn.layout_breaks).colored] == ["ball", "cube"]
