"""GoT's diffusion-side nodes inside a real ComfyUI: UNet loader, Mask from Boxes, Reference Encoder, SSGM
Conditioner, GoT Guider. Numeric checks run in-process (ComfyUI's modules on the CPU, tiny converted models);
the server checks are in test_diffusion_server.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from got_backend.testing.fixtures import POOLED_DIM, TEXT_HIDDEN, unet_config, vae_config

SIZE = 64  # pixels; latents are 8x8
CHAIN_TEXT = ("A <|object_ref_start|>red ball<|object_ref_end|><|box_start|>(100,120),(480,900)<|box_end|> (red) "
              "next to a <|object_ref_start|>cube<|object_ref_end|><|box_start|>(520,300),(990,1000)<|box_end|> (blue)"
              " under a <|object_ref_start|>sky<|object_ref_end|><|box_start|>(0,0),(1000,250)<|box_end|>.")


# --- shared objects --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def unet_path(inproc) -> str:
    return str(inproc.models_dir / "diffusion_models" / "GoT-6B-unet.safetensors")


@pytest.fixture(scope="module")
def got_model(inproc, unet_path):
    """The converted tiny GoT UNet through the loader node."""
    loader = inproc.pack_module("nodes.unet_loader").GoTUNetLoader
    return loader.execute("GoT-6B-unet.safetensors", "default")[0]


@pytest.fixture(scope="module")
def diffusers_unet(unet_path):
    """The same file in diffusers' UNet2DConditionModel (config from the converter's metadata), float32."""
    from diffusers import UNet2DConditionModel

    with safe_open(unet_path, "pt") as f:
        config = json.loads(f.metadata()["config"])
        state = {k: f.get_tensor(k).float() for k in f.keys()}
    unet = UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    unet.load_state_dict(state, strict=True)
    return unet.eval()


@pytest.fixture(scope="module")
def comfy_vae(inproc):
    import comfy.sd
    import comfy.utils

    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(inproc.models_dir / "vae" / "GoT-6B-vae.safetensors")))


@pytest.fixture(scope="module")
def chain(inproc):
    return inproc.pack_module("got_backend.ssgm.chain").parse_chain(CHAIN_TEXT)


def random_inputs(seed: int, batch: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h = SIZE // 8
    return {"x": torch.randn(batch, 4, h, h, generator=g), "reference": torch.randn(batch, 4, h, h, generator=g),
            "spatial": torch.randn(batch, 4, h, h, generator=g), "context": torch.randn(batch, 64, TEXT_HIDDEN, generator=g),
            "null_context": torch.randn(batch, 64, TEXT_HIDDEN, generator=g), "pooled": torch.randn(batch, POOLED_DIM, generator=g)}


def sdxl_adm(model, pooled: torch.Tensor) -> torch.Tensor:
    return model.encode_adm(pooled_output=pooled, width=SIZE, height=SIZE, crop_w=0, crop_h=0,
                            target_width=SIZE, target_height=SIZE)


# --- UNet loader -----------------------------------------------------------------------------------------------

def test_loader_builds_a_12_channel_sdxl_model(inproc, got_model):
    import comfy.model_base
    import comfy.model_patcher

    assert isinstance(got_model, comfy.model_patcher.ModelPatcher)
    model = got_model.model
    assert type(model) is comfy.model_base.SDXL  # not the inpainting variant get_model() would make
    assert model.concat_keys == ()
    config = model.model_config.unet_config
    assert config["in_channels"] == 12 and config["context_dim"] == TEXT_HIDDEN
    assert config["adm_in_channels"] == POOLED_DIM + 6 * 256 == model.adm_channels
    assert model.diffusion_model.input_blocks[0][0].in_channels == 12


def test_unet_forward_equals_diffusers(inproc, got_model, diffusers_unet):
    """ComfyUI's UNetModel(x, t, context, y) == diffusers UNet(sample, t, encoder_hidden_states,
    text_embeds, time_ids=[H,W,0,0,H,W]) with the same weights: the key conversion, the 12 input channels and
    the ADM wiring (pooled + SDXL size embeddings) are right."""
    model = got_model.model
    inputs = random_inputs(0, batch=2)
    sample = torch.cat([inputs["x"], inputs["reference"], inputs["spatial"]], dim=1)
    t = torch.tensor([999.0, 261.0])
    with torch.no_grad():
        ours = model.diffusion_model(sample, t, context=inputs["context"], y=sdxl_adm(model, inputs["pooled"]))
        time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * 2, dtype=torch.float32)
        theirs = diffusers_unet(sample, t, encoder_hidden_states=inputs["context"],
                                added_cond_kwargs={"text_embeds": inputs["pooled"], "time_ids": time_ids}).sample
    diff = (ours - theirs).abs().max().item()
    print(f"UNetModel vs diffusers: max |diff| {diff:.2e} (output scale {theirs.abs().mean():.3f})")
    assert diff < 1e-4


def test_apply_model_equals_diffusers_step_input(inproc, got_model, diffusers_unet):
    """apply_model(x, sigma) scales only the noisy latent (x / sqrt(sigma^2+1)), concatenates the 8 extra
    channels unscaled and returns x - sigma * eps: the diffusers UNet on the same scaled input agrees."""
    model = got_model.model
    inputs = random_inputs(1)
    sigma = model.model_sampling.sigmas[500].reshape(1)
    extra = torch.cat([inputs["reference"], inputs["spatial"]], dim=1)
    with torch.no_grad():
        denoised = model.apply_model(inputs["x"], sigma, c_concat=extra, c_crossattn=inputs["context"],
                                     y=sdxl_adm(model, inputs["pooled"]))
        t = model.model_sampling.timestep(sigma).float()
        scaled = inputs["x"] / torch.sqrt(sigma ** 2 + 1)
        eps = diffusers_unet(torch.cat([scaled, extra], dim=1), t, encoder_hidden_states=inputs["context"],
                             added_cond_kwargs={"text_embeds": inputs["pooled"],
                                                "time_ids": torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]], dtype=torch.float32)}).sample
    assert abs(t.item() - 500) < 1e-3
    diff = (denoised - (inputs["x"] - sigma * eps)).abs().max().item()
    print(f"apply_model vs diffusers: max |diff| {diff:.2e}")
    assert diff < 1e-4


def real_sdxl_12ch_state_shapes() -> dict[str, torch.Tensor]:
    """GoT-6B's UNet layout at full size (SDXL-base, conv_in widened to 12), on the meta device (no memory)."""
    from diffusers import UNet2DConditionModel

    config = dict(unet_config(), block_out_channels=[320, 640, 1280], transformer_layers_per_block=[1, 2, 10],
                  attention_head_dim=[5, 10, 20], cross_attention_dim=2048,
                  projection_class_embeddings_input_dim=2816)
    with torch.device("meta"):
        return UNet2DConditionModel(**config).state_dict()


def test_real_size_unet_is_detected_as_sdxl(inproc):
    import comfy.supported_models

    bridge = inproc.pack_module("nodes.unet_keys")
    config = inproc.pack_module("nodes.unet_loader").got_unet_config(bridge.diffusers_unet_to_comfy(real_sdxl_12ch_state_shapes()))
    assert config["in_channels"] == 12 and config["adm_in_channels"] == 2816 and config["context_dim"] == 2048
    assert config["transformer_depth"] == [0, 0, 2, 2, 10, 10] and config["transformer_depth_middle"] == 10
    assert comfy.supported_models.SDXL.matches(config)  # ComfyUI's own SDXL, only in_channels differs


def diffusers_state(**overrides) -> dict[str, torch.Tensor]:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return {k: v.half() for k, v in UNet2DConditionModel(**dict(unet_config(), **overrides)).state_dict().items()}


def test_plain_sdxl_unet_is_refused(inproc, tmp_path):
    loader = inproc.pack_module("nodes.unet_loader")
    path = tmp_path / "sdxl-4ch.safetensors"
    save_file(diffusers_state(in_channels=4), str(path))
    with pytest.raises(loader.UNetWeightsError, match=r"4 input channels \(a plain SDXL UNet\).*GoT-6B-unet"):
        loader.load_got_unet(str(path))


def test_non_unet_files_are_refused(inproc, tmp_path):
    loader = inproc.pack_module("nodes.unet_loader")
    vae_file = str(inproc.models_dir / "vae" / "GoT-6B-vae.safetensors")
    with pytest.raises(loader.UNetWeightsError, match="does not hold a UNet"):
        loader.load_got_unet(vae_file)
    truncated = diffusers_state()
    del truncated["up_blocks.0.attentions.1.proj_out.weight"]
    save_file(truncated, str(tmp_path / "truncated.safetensors"))
    with pytest.raises(loader.UNetWeightsError, match="1 UNet tensors missing"):
        loader.load_got_unet(str(tmp_path / "truncated.safetensors"))


def test_comfyui_named_unet_loads_identically(inproc, got_model, tmp_path):
    """A GoT UNet saved by ComfyUI (checkpoint names, `model.diffusion_model.` prefix) loads to the same model."""
    loader = inproc.pack_module("nodes.unet_loader")
    state = {f"model.diffusion_model.{k}": v.half() for k, v in got_model.model.diffusion_model.state_dict().items()}
    save_file(state, str(tmp_path / "comfy-names.safetensors"))
    again = loader.load_got_unet(str(tmp_path / "comfy-names.safetensors")).model.diffusion_model.state_dict()
    assert all(torch.equal(again[k], v) for k, v in got_model.model.diffusion_model.state_dict().items())


def test_lora_patches_the_got_unet(inproc, unet_path):
    """A kohya-style SDXL LoRA (diffusers block names) finds its weight in the GoT model through ComfyUI's
    LoRA key map, and patching gives W + strength * alpha/rank * up @ down."""
    import comfy.model_management
    import comfy.sd

    model = inproc.pack_module("nodes.unet_loader").load_got_unet(unet_path)
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    weight_key = "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
    before = model.model.state_dict()[weight_key].clone()
    g = torch.Generator().manual_seed(3)
    up, down, alpha = torch.randn(before.shape[0], 4, generator=g), torch.randn(4, before.shape[1], generator=g), 2.0
    lora = {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down, f"{name}.alpha": torch.tensor(alpha)}
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 0.5, 0)
    comfy.model_management.load_models_gpu([patched])
    try:
        after = patched.model.state_dict()[weight_key].float()
        assert torch.allclose(after, before.float() + 0.5 * alpha / 4 * up @ down, atol=1e-5)
    finally:
        patched.unpatch_model()


# --- Mask from Boxes -------------------------------------------------------------------------------------------

def test_mask_from_boxes(inproc, chain):
    layout = inproc.pack_module("got_backend.ssgm.layout")
    masks, preview = inproc.pack_module("nodes.layout").GoTMaskFromBoxes.execute(chain, 96, 64)
    assert masks.shape == (3, 64, 96) and torch.equal(masks, layout.box_masks(chain, 96, 64))
    assert preview.shape == (1, 64, 96, 3) and torch.equal(preview[0], layout.layout_preview(chain, 96, 64))


def test_mask_from_boxes_without_boxes_and_with_an_unknown_colour(inproc):
    chains = inproc.pack_module("got_backend.ssgm.chain")
    node = inproc.pack_module("nodes.layout").GoTMaskFromBoxes
    masks, _ = node.execute(chains.parse_chain("A plain sky."), 64, 64)
    assert masks.shape == (1, 64, 64) and masks.sum() == 0
    bad = chains.parse_chain("A <|object_ref_start|>cat<|object_ref_end|><|box_start|>(1,2),(300,400)<|box_end|> (blurple)")
    with pytest.raises(chains.ChainError, match="'blurple'.*not a colour name"):
        node.execute(bad, 64, 64)


# --- Reference Encoder -----------------------------------------------------------------------------------------

def test_comfyui_vae_encode_is_the_unscaled_mode(inproc, comfy_vae):
    """ComfyUI's VAE.encode (what the nodes use) gives diffusers' latent_dist.mode(), not scaled by 0.13025."""
    from diffusers import AutoencoderKL

    with safe_open(str(inproc.models_dir / "vae" / "GoT-6B-vae.safetensors"), "pt") as f:
        state = {k: f.get_tensor(k).float() for k in f.keys()}
    vae = AutoencoderKL(**vae_config())
    vae.load_state_dict(state, strict=True)
    pixels = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5)) * 2 - 1
    ours = inproc.pack_module("nodes.comfy_bridge").vae_encode_fn(comfy_vae)(pixels)
    with torch.no_grad():
        theirs = vae.encode(pixels).latent_dist.mode()
    diff = (ours - theirs).abs().max().item()
    print(f"ComfyUI VAE.encode vs diffusers mode: max |diff| {diff:.2e} (latent scale {theirs.abs().mean():.3f})")
    assert diff < 1e-3 * theirs.abs().max().item()


def test_reference_encoder_text_to_image_is_black(inproc, comfy_vae):
    latents = inproc.pack_module("got_backend.ssgm.latents")
    reference, width, height = inproc.pack_module("nodes.reference").GoTReferenceEncoder.execute(comfy_vae, SIZE, 96)
    encode = inproc.pack_module("nodes.comfy_bridge").vae_encode_fn(comfy_vae)
    assert set(reference) == {"samples"} and reference["samples"].shape == (1, 4, 12, 8)
    assert torch.equal(reference["samples"], encode(latents.black_pixels(SIZE, 96)))
    assert (width, height) == (SIZE, 96)


def test_reference_encoder_edit_equals_core_vae_encode_of_resized_image(inproc, comfy_vae):
    """The reference latent is an ordinary LATENT: the core VAE Encode node on the PIL-bicubic resized image
    gives the same tensor. The final size keeps the source aspect with the short side 64."""
    import nodes as comfy_nodes
    from PIL import Image

    image = torch.rand(1, 48, 80, 3, generator=torch.Generator().manual_seed(7))  # ComfyUI IMAGE [B,H,W,C]
    reference, width, height = inproc.pack_module("nodes.reference").GoTReferenceEncoder.execute(comfy_vae, SIZE, SIZE, image)
    pil = Image.fromarray(image[0].mul(255).round().to(torch.uint8).numpy()).resize((SIZE, SIZE), Image.BICUBIC)
    resized = torch.from_numpy(np.array(pil)).float().div(255)[None]
    (core,) = comfy_nodes.VAEEncode().encode(comfy_vae, resized)
    diff = (reference["samples"] - core["samples"]).abs().max().item()
    assert diff < 1e-5, diff
    assert (width, height) == (106, 64)  # 64 * 80/48 = 106.67, truncated as the reference does (not 107)


def test_reference_encoder_refuses_a_batch(inproc, comfy_vae):
    images = inproc.pack_module("got_backend.images")
    with pytest.raises(images.ImageInputError, match="batch of 2 images"):
        inproc.pack_module("nodes.reference").GoTReferenceEncoder.execute(comfy_vae, SIZE, SIZE, torch.rand(2, 64, 64, 3))


# --- conditioning and guider -----------------------------------------------------------------------------------

def make_branches(inproc, seed: int):
    inputs = random_inputs(seed)
    conditioner = inproc.pack_module("nodes.conditioner")
    branches = conditioner.branch_conditionings(inputs["context"], inputs["null_context"], inputs["pooled"],
                                           inputs["reference"], inputs["spatial"], SIZE, SIZE)
    return inputs, branches


def test_branch_conditionings_follow_the_spec_table(inproc):
    inputs, branches = make_branches(inproc, 2)
    zeros = torch.zeros_like(inputs["reference"])
    expected = {"C": ("context", inputs["reference"], inputs["spatial"]), "T": ("context", inputs["reference"], zeros),
                "I": ("null_context", inputs["reference"], zeros), "U": ("null_context", zeros, zeros)}
    for name, (context, reference, spatial) in expected.items():
        [[cross_attn, extra]] = branches[name]
        assert cross_attn is inputs[context]
        assert torch.equal(extra["noise_concat"], torch.cat([reference, spatial], dim=1))
        assert extra["pooled_output"] is inputs["pooled"]  # never nulled
        sizes = [extra[k] for k in ("height", "width", "crop_h", "crop_w", "target_height", "target_width")]
        assert sizes == [SIZE, SIZE, 0, 0, SIZE, SIZE]  # SDXL time ids [H, W, 0, 0, H, W]


class Recorder:
    """A one-evaluation sampler: calls the guider once at sigmas[0] and keeps what it saw."""

    def __init__(self):
        self.seen = {}

    def __call__(self, model, x, sigmas, extra_args=None, callback=None, disable=None):
        sigma = sigmas[0] * x.new_ones([x.shape[0]])
        denoised = model(x, sigma, **(extra_args or {}))
        self.seen.update(x=x.clone(), sigma=sigma.clone(), denoised=denoised.clone())
        return denoised


def one_evaluation(guider, model) -> Recorder:
    """The guider evaluated once, at sigma index 700, on fixed noise."""
    import comfy.samplers

    recorder = Recorder()
    sigmas = torch.stack([model.model.model_sampling.sigmas[700], torch.tensor(0.0)])
    noise = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(9))
    guider.sample(noise, torch.zeros_like(noise), comfy.samplers.KSAMPLER(recorder), sigmas, disable_pbar=True)
    return recorder


def branch_predictions(model_patcher, branches, x, sigma) -> dict[str, torch.Tensor]:
    """Each branch's denoised prediction by its own apply_model call."""
    model, out = model_patcher.model, {}
    with torch.no_grad():
        for name, [[context, extra]] in branches.items():
            out[name] = model.apply_model(x, sigma, c_concat=extra["noise_concat"], c_crossattn=context,
                                          y=sdxl_adm(model, extra["pooled_output"]))
    return out


@pytest.mark.parametrize("scales", [(7.5, 4.0, 1.0), (4.0, 3.0, 1.5)], ids=["t2i-defaults", "edit-defaults"])
def test_guider_step_equals_four_branches_and_the_formula(inproc, got_model, scales):
    """One guider evaluation == four separate apply_model calls combined with combine_got_cfg on eps; the
    branches needed run as ONE UNet call (batch 3 at the t2i defaults, where U has weight 0; batch 4 for edits)."""

    guidance = inproc.pack_module("got_backend.ssgm.guidance")
    inputs, branches = make_branches(inproc, 4)
    node = inproc.pack_module("nodes.guider").GoTGuiderNode
    (guider,) = node.execute(got_model, branches, *scales)
    calls = []
    hook = got_model.model.diffusion_model.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    try:
        recorder = one_evaluation(guider, got_model)
    finally:
        hook.remove()
    assert calls == [len(guidance.needed_branches(*scales))]
    x, sigma = recorder.seen["x"], recorder.seen["sigma"]
    eps = {name: (x - denoised) / sigma for name, denoised in branch_predictions(got_model, branches, x, sigma).items()}
    expected = x - sigma * guidance.combine_got_cfg(eps["C"], eps["T"], eps["I"], eps["U"], *scales)
    diff = (recorder.seen["denoised"] - expected).abs().max().item()
    print(f"GoT Guider vs 4 apply_model calls + formula ({scales}): max |diff| {diff:.2e}")
    assert diff < 1e-4 * max(1.0, expected.abs().max().item())


def test_cfg_patches_apply_to_gots_guidance(inproc, got_model):
    """Core's RescaleCFG (a sampler_cfg_function) and CFGNorm (a sampler_post_cfg_function) patch the model
    before the GoT Guider, as in a graph: GoT's guidance stays the CFG and the patches act on it, with branch C
    (the full guidance) as the cond prediction."""
    from comfy_extras.nodes_cfg import CFGNorm
    from comfy_extras.nodes_model_advanced import RescaleCFG

    _, branches = make_branches(inproc, 8)
    guider_node = inproc.pack_module("nodes.guider").GoTGuiderNode

    def denoised(model):
        recorder = one_evaluation(guider_node.execute(model, branches, 7.5, 4.0, 1.0)[0], model)
        return recorder.seen["x"], recorder.seen["sigma"], recorder.seen["denoised"]

    x, sigma, plain = denoised(got_model)
    cond = branch_predictions(got_model, branches, x, sigma)["C"]
    s = sigma.view(-1, 1, 1, 1)

    def v_pred(d):  # RescaleCFG works on v-predictions
        return (x / (s ** 2 + 1) - d) * (s ** 2 + 1) ** 0.5 / s

    # multiplier 0: RescaleCFG's plain CFG of the pair it is given is GoT's guidance
    assert torch.allclose(denoised(RescaleCFG().patch(got_model, 0.0)[0])[2], plain, atol=1e-4)
    # multiplier 1: the guided v-prediction rescaled to the std of branch C's
    rescaled = denoised(RescaleCFG().patch(got_model, 1.0)[0])[2]
    assert (rescaled - plain).abs().max() > 1e-3
    torch.testing.assert_close(v_pred(rescaled).std(), v_pred(cond).std(), rtol=1e-4, atol=1e-6)
    # CFGNorm (post-CFG): GoT's result scaled by min(1, |C| / |result|) * strength, channel norms
    normed = denoised(CFGNorm.execute(got_model, 0.5)[0])[2]
    scale = (cond.norm(dim=1, keepdim=True) / (plain.norm(dim=1, keepdim=True) + 1e-8)).clamp(0.0, 1.0)
    torch.testing.assert_close(normed, plain * scale * 0.5, rtol=1e-4, atol=1e-5)


def test_ksampler_and_sampler_custom_advanced_run_with_got_conditioning(inproc, got_model):
    """The core KSampler (positive = C, negative = U) and SamplerCustomAdvanced with the GoT Guider both sample
    the 12-channel model; different spatial latents give different images (the extra channels are used)."""
    import comfy.samplers
    import comfy_extras.nodes_custom_sampler as custom
    import nodes as comfy_nodes

    _, branches = make_branches(inproc, 6)
    latent = {"samples": torch.zeros(1, 4, SIZE // 8, SIZE // 8)}
    (out,) = comfy_nodes.KSampler().sample(got_model, 1, 3, 4.0, "euler", "normal", branches["C"], branches["U"], latent)
    assert out["samples"].shape == (1, 4, 8, 8) and torch.isfinite(out["samples"]).all()

    def run(guider_branches):
        (guider,) = inproc.pack_module("nodes.guider").GoTGuiderNode.execute(got_model, guider_branches, 7.5, 4.0, 1.0)
        sigmas = comfy.samplers.calculate_sigmas(got_model.get_model_object("model_sampling"), "normal", 3).cpu()
        noise = custom.Noise_RandomNoise(1)
        result = custom.SamplerCustomAdvanced().sample(noise, guider, comfy.samplers.sampler_object("euler"), sigmas, latent)
        return result[0]["samples"]

    first = run(branches)
    moved = dict(branches)
    [[context, extra]] = branches["C"]
    moved["C"] = [[context, dict(extra, noise_concat=extra["noise_concat"] * -1)]]
    assert torch.isfinite(first).all() and (run(moved) - first).abs().max() > 1e-4


@pytest.fixture(scope="module")
def managed_mllm(inproc):
    """The converted tiny GoT MLLM through the pack's own loader (ComfyUI-managed), in fp32 on the CPU."""
    loader = inproc.pack_module("nodes.mllm_loader")
    return loader.load_got_mllm("GoT-6B", loader.NO_QWEN, "fp32")


def test_ssgm_conditioner_builds_gots_guidance(inproc, managed_mllm, comfy_vae):
    """positive = branch C (c, p, reference ‖ spatial), negative = branch U (c0, p, zeros), the four branches
    per docs/ALGORITHM.md §9, with the MLLM's semantic guidance and the chain's spatial latent made from the same VAE."""
    types = inproc.pack_module("nodes.types")
    reasoning = managed_mllm.got.user_chain("a red ball next to a blue cube", CHAIN_TEXT + "<|im_gen_start|>")
    chain = types.reasoned_chain(reasoning.text, reasoning)
    (reference, *_) = inproc.pack_module("nodes.reference").GoTReferenceEncoder.execute(comfy_vae, SIZE, SIZE)
    node = inproc.pack_module("nodes.conditioner").GoTSSGMConditioner
    positive, negative, branches = node.execute(managed_mllm, chain, comfy_vae, reference, SIZE, SIZE)

    guidance = managed_mllm.got.semantic_guidance(reasoning)
    encode = inproc.pack_module("nodes.comfy_bridge").vae_encode_fn(comfy_vae)
    spatial = inproc.pack_module("got_backend.ssgm.latents").spatial_latent(chain, encode, SIZE, SIZE)
    assert positive is branches["C"] and negative is branches["U"]
    [[c, pos]], [[c0, neg]] = positive, negative
    assert c.shape == (1, 64, TEXT_HIDDEN) and torch.allclose(c, guidance.context.float(), atol=1e-6)
    assert torch.allclose(c0, guidance.null_context.float(), atol=1e-6)
    assert torch.allclose(pos["pooled_output"], guidance.pooled.float(), atol=1e-6)
    assert neg["pooled_output"] is pos["pooled_output"]
    assert torch.equal(pos["noise_concat"], torch.cat([reference["samples"], spatial], dim=1))
    assert torch.equal(neg["noise_concat"], torch.zeros(1, 8, SIZE // 8, SIZE // 8))
    [[_, t_branch]] = branches["T"]
    assert torch.equal(t_branch["noise_concat"][:, 4:], torch.zeros(1, 4, 8, 8))
    assert (pos["width"], pos["height"], pos["target_width"], pos["crop_w"]) == (SIZE, SIZE, SIZE, 0)


def test_ssgm_conditioner_refuses_a_reference_of_another_size(inproc, managed_mllm, comfy_vae):
    types = inproc.pack_module("nodes.types")
    reasoning = managed_mllm.got.user_chain("a red ball", CHAIN_TEXT + "<|im_gen_start|>")
    conditioner, sizes = inproc.pack_module("nodes.conditioner"), inproc.pack_module("got_backend.ssgm.sizes")
    with pytest.raises(sizes.SizeError, match=r"same width and height"):
        conditioner.GoTSSGMConditioner.execute(managed_mllm, types.reasoned_chain(reasoning.text, reasoning), comfy_vae,
                                          {"samples": torch.zeros(1, 4, 16, 16)}, SIZE, SIZE)


def test_a_diffusers_file_that_is_not_an_sdxl_unet_is_refused(inproc, tmp_path):
    loader = inproc.pack_module("nodes.unet_loader")
    state = diffusers_state()
    save_file({k: v for k, v in state.items() if not k.startswith("down_blocks.1.resnets.0.")},
              str(tmp_path / "partial.safetensors"))
    with pytest.raises(loader.UNetWeightsError, match=r"no tensor 'down_blocks.1.resnets.0.conv1.weight'"):
        loader.load_got_unet(str(tmp_path / "partial.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith("up_blocks.")}, str(tmp_path / "encoder.safetensors"))
    with pytest.raises(loader.UNetWeightsError, match="up_blocks.0 has 0 resnets"):
        loader.load_got_unet(str(tmp_path / "encoder.safetensors"))


def test_wrong_conditioning_or_latent_size_is_a_clear_error(inproc, got_model):
    """Sampling GoT's UNet with CLIP-style conditioning (no extra channels), or at a latent size other than the
    conditioning's, stops with a message saying what to connect instead."""
    import nodes as comfy_nodes

    loader = inproc.pack_module("nodes.unet_loader")
    inputs, branches = make_branches(inproc, 8)
    plain = [[inputs["context"], {"pooled_output": inputs["pooled"]}]]
    latent = {"samples": torch.zeros(1, 4, SIZE // 8, SIZE // 8)}
    with pytest.raises(loader.GoTConditioningError, match="8 extra input channels.*got none.*SSGM Conditioner"):
        comfy_nodes.KSampler().sample(got_model, 1, 1, 4.0, "euler", "normal", branches["C"], plain, latent)
    bigger = {"samples": torch.zeros(1, 4, 12, 16)}
    with pytest.raises(loader.GoTConditioningError, match="latent being sampled is 128x96 pixels.*made for 64x64"):
        comfy_nodes.KSampler().sample(got_model, 1, 1, 4.0, "euler", "normal", branches["C"], branches["U"], bigger)
