"""GoT Judge and GoT PARM Guider (docs/ALGORITHM.md §13) inside ComfyUI: in-process on the tiny models with the
judge steered by tests/steering.py's ScriptedJudge, and the "GoT best of N with a judge" template (plain and with
the PARM guider) through a real server, bad input failing one prompt, never the server."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from tests.comfyui.test_workflows import CHAIN, SIZE, nodes_of, ran, saved_image, small, twin
from tests.steering import ScriptedJudge

TEMPLATE = "GoT best of N with a judge"
PROMPT = "a red apple and a green pear"


@pytest.fixture(scope="module")
def parts(inproc):
    """The tiny GoT UNet, the GoT MLLM as the judge (one load), the VAE and branch conditionings of CHAIN."""
    import comfy.sd
    import comfy.utils

    loader, unet = inproc.pack_module("nodes.mllm_loader"), inproc.pack_module("nodes.unet_loader")
    model = unet.GoTUNetLoader.execute("GoT-6B-unet.safetensors", "default")[0]
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(inproc.models_dir / "vae" / "GoT-6B-vae.safetensors")))
    mllm = loader.load_got_mllm("GoT-6B", loader.NO_QWEN, "fp32")
    vlm = loader.load_vlm("GoT-6B", "fp32")
    reasoning = mllm.got.user_chain(PROMPT, CHAIN)
    chain = inproc.pack_module("nodes.types").reasoned_chain(reasoning.text, reasoning)
    reference = inproc.pack_module("nodes.reference").GoTReferenceEncoder.execute(vae, SIZE, SIZE)[0]
    branches = inproc.pack_module("nodes.conditioner").GoTSSGMConditioner.execute(
        mllm, chain, vae, reference, SIZE, SIZE)[2]
    return {"model": model, "vae": vae, "vlm": vlm, "mllm": mllm, "chain": chain, "branches": branches}


def parm_sample(inproc, parts, script: ScriptedJudge, candidates: int, steps: int, checks: tuple[float, ...]):
    judge_nodes, schedule = inproc.pack_module("nodes.judge"), inproc.pack_module("nodes.schedule")
    settings = inproc.pack_module("got_backend.judge").ParmSettings(checks=checks)
    guider = judge_nodes.GoTPARMGuider(parts["model"])
    guider.set_guidance(parts["branches"], 7.5, 4.0, 1.0)
    guider.set_parm(parts["vlm"], parts["vae"], PROMPT, settings, logits_processor=[script])
    sigmas = schedule.GoTDDPMSchedule.execute(parts["model"], steps)[0]
    noise = torch.randn(candidates, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(0))
    rows = []
    unet = parts["model"].model.diffusion_model
    handle = unet.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        samples = guider.sample(noise, torch.zeros_like(noise), schedule.DiffusersDDPMSampler(), sigmas, seed=0)
    finally:
        handle.remove()
    return guider, samples, rows


def test_parm_guider_stops_candidates_without_potential(inproc, parts):
    """4 candidates, 5 steps, a check at 40% (after step 2): 1 and 3 have no potential and are left out of every
    later UNet call (3 branches per candidate per step, batched)."""
    tokenizer = parts["vlm"].chat.tokenizer
    script = ScriptedJudge(tokenizer, clarity=[0.9] * 4, potential=[0.8, 0.1, 0.7, 0.2])
    guider, samples, rows = parm_sample(inproc, parts, script, candidates=4, steps=5, checks=(0.4,))
    run = guider.last_run
    assert run.unet_calls == [5, 2, 5, 2] and sum(rows) == 3 * sum(run.unet_calls)  # plain: 3 * 20 rows
    assert [track.stopped_at for track in run.control.tracks] == [None, 0.4, None, 0.4]
    assert set(run.previews) == {1, 3} and run.previews[1].shape == (1, SIZE, SIZE, 3)
    assert samples.shape == (4, 4, SIZE // 8, SIZE // 8) and torch.isfinite(samples).all()
    # The judge picks among the finished ones and marks the stopped ones.
    images = parts["vae"].decode(samples)
    judge_node = inproc.pack_module("nodes.judge").GoTJudgeNode.PREPARE_CLASS_CLONE({})
    best, index, text, chart = judge_node.execute(parts["vlm"], images, PROMPT, 0.0, parm=guider)[:4]
    assert index in (0, 2) and torch.equal(best, images[index:index + 1])
    lines = text.splitlines()
    assert len(lines) == 4 and "stopped at 40%" in lines[1] and "stopped at 40%" in lines[3]
    assert lines[index].startswith("*") and chart.shape == (1, 256, 512, 3)


def test_judge_node_picks_the_argmax_with_the_plan_score(inproc, parts):
    judge_nodes = inproc.pack_module("nodes.judge")
    images = torch.rand(3, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(1))
    candidates = judge_nodes.pil_batch(images)
    judge = judge_nodes.judge_of(parts["vlm"], 0.5)
    expected = judge.score(candidates, PROMPT, [parts["chain"]] * 3)
    node = judge_nodes.GoTJudgeNode.PREPARE_CLASS_CLONE({})
    best, index, text, _ = node.execute(parts["vlm"], images, PROMPT, 0.5, chain=parts["chain"])[:4]
    scores = [s.score for s in expected]
    assert index == max(range(3), key=lambda i: (scores[i], -i)) and all(s.plan is not None for s in expected)
    assert f"{expected[index].score:.3f}" in text.splitlines()[index]


def test_judge_node_bad_inputs(inproc, parts):
    judge_nodes, judge = inproc.pack_module("nodes.judge"), inproc.pack_module("got_backend.judge")
    node = judge_nodes.GoTJudgeNode.PREPARE_CLASS_CLONE({})
    images = inproc.pack_module("got_backend.images")
    with pytest.raises(images.ImageInputError, match="GoT Judge's images: the image batch is empty"):
        node.execute(parts["vlm"], torch.zeros(0, SIZE, SIZE, 3), PROMPT, 0.5)
    with pytest.raises(images.ImageInputError, match="GoT Judge's images: the image holds NaN or infinite values"):
        node.execute(parts["vlm"], torch.full((2, SIZE, SIZE, 3), math.nan), PROMPT, 0.5)
    with pytest.raises(judge.JudgeInputError, match="prompt .* is empty"):
        node.execute(parts["vlm"], torch.rand(1, SIZE, SIZE, 3), " ", 0.5)
    with pytest.raises(judge.JudgeInputError, match="GoT PARM Guider"):
        node.execute(parts["vlm"], torch.rand(1, SIZE, SIZE, 3), PROMPT, 0.5, parm=object())


# --- the template through a real server --------------------------------------------------------------------------

def judged(graph: dict) -> dict:
    graph = small(graph)
    for node in nodes_of(graph, "PrimitiveStringMultiline"):
        node["inputs"]["value"] = PROMPT
    return graph


def test_best_of_n_template_renders_and_picks(comfyui_server):
    entry, _ = ran(comfyui_server, judged(twin(TEMPLATE)), f"{TEMPLATE} (4 candidates, 64x64, 2 steps)")
    (text,) = entry["outputs"]["15"]["text"]
    lines = text.splitlines()
    assert len(lines) == 4 and sum(line.startswith("*") for line in lines) == 1
    assert saved_image(comfyui_server, entry, "16").size == (SIZE, SIZE)
    assert saved_image(comfyui_server, entry, "17").size == (512, 256)  # the chart
    assert len(entry["outputs"]["18"]["images"]) == 4  # every candidate


def with_parm_guider(graph: dict, checks: str = "0.5") -> dict:
    """The template with the GoT PARM Guider in place of the GoT Guider, connected to the judge."""
    graph["8"] = {"class_type": "GoTPARMGuider", "inputs": {
        **graph["8"]["inputs"], "vlm": ["19", 0], "vae": ["4", 0], "prompt": ["3", 0], "checks": checks,
        "potential_threshold": 0.5}}
    graph["15"]["inputs"]["parm"] = ["8", 0]
    return graph


def test_best_of_n_template_with_the_parm_guider(comfyui_server):
    graph = with_parm_guider(judged(twin(TEMPLATE)))
    entry, _ = ran(comfyui_server, graph, f"{TEMPLATE} with the GoT PARM Guider")
    (text,) = entry["outputs"]["15"]["text"]
    assert len(text.splitlines()) == 4 and sum(line.startswith("*") for line in text.splitlines()) == 1


def test_bad_judge_inputs_fail_the_prompt_not_the_server(comfyui_server):
    status, body = comfyui_server.submit(with_parm_guider(judged(twin(TEMPLATE)), checks="0.4, 1.4"))
    assert status == 400 and "check point must be a number from 0 to 1, got 1.4" in json.dumps(body["node_errors"]["8"])
    folder = comfyui_server.base_dir / "models" / "LLM" / "not-a-qwen"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    graph = judged(twin(TEMPLATE))
    graph["19"]["inputs"]["model_folder"] = "not-a-qwen"
    error = comfyui_server.execution_error(comfyui_server.run(graph))
    assert error["node_type"] == "GoTVLMLoader" and "not-a-qwen" in error["exception_message"]
    empty = copy.deepcopy(judged(twin(TEMPLATE)))
    empty["12"]["inputs"]["batch_size"] = 1
    empty["15"]["inputs"]["prompt"] = " "
    _, body = comfyui_server.submit(empty)  # refused at queue time, under the judge's prompt
    assert "the prompt to judge the images by is empty" in json.dumps(body["node_errors"]["15"])
    entry, _ = ran(comfyui_server, judged(twin(TEMPLATE)), f"{TEMPLATE} after the failures")
    assert entry["outputs"]["16"]["images"]
