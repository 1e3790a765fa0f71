"""What a new user meets first: the README's test command is the one CI runs, the command line never writes over
the chain file it was given, its chain file holds only what a user should edit, and it speaks a user's words."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from got_backend.__main__ import main, turn_summary
from got_backend.pipeline import GoTPipeline, ReasoningSettings, RenderSettings
from got_backend.reasoning.tokens import IMAGE_QUERY_TOKENS
from tests.steering import ForceToken, steer

REPO = Path(__file__).resolve().parents[1]
CHAIN = ("A <|object_ref_start|>red apple<|object_ref_end|><|box_start|>(100,120),(500,600)<|box_end|> (red) on a "
         "<|object_ref_start|>plate<|object_ref_end|><|box_start|>(50,500),(950,990)<|box_end|> (blue).<|im_gen_start|>")


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    command = re.search(r"^README_TEST_COMMAND='([^']+)'$", ci, re.M).group(1)
    assert command.startswith("pip install -r requirements-test.txt && ") and "python -m pytest" in command
    assert f"\n    {command}\n" in (REPO / "README.md").read_text()  # a code line of its own
    assert 'bash -c "$README_TEST_COMMAND"' in ci


@pytest.mark.parametrize("out_name", ["chain.txt", "chain.png"], ids=["--out X", "--out X.png writes X.chain.txt"])
def test_the_chain_file_is_never_overwritten(tmp_path: Path, tiny_models_dir: Path, out_name: str,
                                             capsys: pytest.CaptureFixture) -> None:
    chain = tmp_path / ("chain.chain.txt" if out_name == "chain.png" else "chain.txt")
    chain.write_text(CHAIN)
    code = main(["generate", "--models", str(tiny_models_dir), "--prompt", "an apple", "--chain-file", str(chain),
                 "--out", str(tmp_path / out_name), "--device", "cpu"])
    assert code == 2 and chain.read_text() == CHAIN
    assert "over your chain file" in capsys.readouterr().err


@pytest.fixture(scope="module")
def pipeline(tiny_models_dir: Path) -> GoTPipeline:
    return GoTPipeline.from_models_dir(tiny_models_dir, device="cpu")


def test_turns_are_told_in_a_users_words(pipeline: GoTPipeline) -> None:
    given = pipeline.mllm.user_chain("an apple", CHAIN)
    assert turn_summary(given) == "your chain was read: the plan is ready, drawing the image"
    written = pipeline.mllm.reason("an apple", max_new_tokens=3, logits_processor=steer())
    assert turn_summary(written) == "the model wrote 3 tokens and reached the token limit before finishing its plan"


def test_the_written_chain_holds_no_image_query_tokens(pipeline: GoTPipeline) -> None:
    """After <|im_gen_start|> the reasoner appends the 64 image queries itself; the chain a user edits (and
    passes back) must not carry them, whatever the model writes after them."""
    queries = pipeline.mllm.tokens.image_queries
    # the tiny model steered to echo image-query tokens after the image, as random weights tend to
    settings = ReasoningSettings(max_new_tokens=6, logits_processor=(ForceToken(1, list(queries[:3])),))
    result = pipeline.render_chain("an apple", CHAIN, render=RenderSettings(width=64, height=64, steps=1),
                                   reasoning=settings)
    assert result.turns[1].sequence.ids[result.turns[1].turn_start - 64:result.turns[1].turn_start] == queries
    assert result.text.count("<|im_gen_0000|>") == 1  # what the model wrote
    assert not any(token in result.chain_text for token in IMAGE_QUERY_TOKENS)
    assert result.chain_text.startswith(CHAIN)


def test_the_readme_goes_in_the_order_a_newcomer_installs() -> None:
    readme = (REPO / "README.md").read_text()
    steps = ["### 1. Install the pack", "### 2. Download the models", "### 3. Convert once", "### 4. Open a template"]
    where = [readme.find(step) for step in steps]
    assert -1 not in where and where == sorted(where), dict(zip(steps, where))
    install, download, convert, template = (readme[a:b] for a, b in zip(where, [*where[1:], len(readme)]))
    # which python installs the requirements: ComfyUI's venv, the portable build's embedded one, the Desktop's
    for python in ("venv/bin/python -m pip", "python_embeded\\python.exe -m pip", "ComfyUI Desktop",
                   ".venv\\Scripts\\python.exe -m pip"):
        assert python in install, python
    assert "never installs or changes\ntorch" in install or "never installs or changes torch" in install
    assert "mkdir ComfyUI/models/LLM" in download and "`models/LLM/GoT-6B/`" in download
    assert "No SDXL VAE download is needed" in download and "GoT-6B-vae.safetensors" in download
    assert "python -m got_backend.convert --release ../../models/LLM/GoT-6B" in convert
    assert "GoT text-to-image" in template
    # the converter writes the VAE the templates load
    from got_backend.convert import OutputPaths

    assert OutputPaths.under(Path("models"), "GoT-6B").vae == Path("models/vae/GoT-6B-vae.safetensors")
    for name in ("GoT text-to-image", "GoT image editing"):
        assert "GoT-6B-vae.safetensors" in (REPO / "workflows" / f"{name}.json").read_text()


def template_cards() -> list[tuple[str, str]]:
    """(name, description) of web/template_cards.js' TEMPLATES, in order, read from its source."""
    source = (REPO / "web" / "template_cards.js").read_text()
    entries = re.findall(r'\["(GoT [^"]+)",\s*((?:"[^"]*"\s*\+?\s*)+)\]', source)
    return [(name, "".join(json.loads(piece) for piece in re.findall(r'"[^"]*"', body))) for name, body in entries]


def test_every_template_has_a_card_saying_when_to_use_it_text_to_image_first():
    cards = template_cards()
    assert sorted(name for name, _ in cards) == sorted(path.stem for path in (REPO / "workflows").glob("*.json"))
    assert cards[0][0] == "GoT text-to-image"
    assert all(len(description) > 60 and name not in description for name, description in cards)
