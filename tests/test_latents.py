"""Spatial and reference latents with a real (random-weight, SDXL-shaped) diffusers VAE, against the reference's
own way: PIL canvases and PIL bicubic resizes, one VAE call per canvas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image, ImageDraw

from got_backend.ssgm.chain import ChainError, parse_chain
from got_backend.testing.fixtures import vae_config
from got_backend.images import ImageInputError, check_rgb_image
from got_backend.ssgm.latents import LatentInputError, reference_latent, spatial_latent, vae_mode_encoder
from got_backend.ssgm.sizes import SizeError

BS, BE = "<|box_start|>", "<|box_end|>"
CHAIN = (f"a <|object_ref_start|>cat<|object_ref_end|>{BS}(100,200),(500,900){BE} (red), "
         f"a {BS}(0,0),(999,300){BE} (teal), an uncoloured {BS}(300,300),(700,700){BE} and "
         f"{BS}(600,100),(1000,1000){BE} (gold)")


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(**vae_config()).eval()


def pil_to_signed(image: Image.Image) -> torch.Tensor:
    """The reference's PIL image -> [1, 3, H, W] in [-1, 1] (ToTensor, Normalize(0.5, 0.5))."""
    return (torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5


def reference_encode(vae: AutoencoderKL, image: Image.Image) -> torch.Tensor:
    with torch.no_grad():
        return vae.encode(pil_to_signed(image)).latent_dist.mode()


def test_spatial_latent_equals_per_box_reference(vae: AutoencoderKL) -> None:
    width, height = 64, 48
    calls = []

    def counting_encode(pixels: torch.Tensor) -> torch.Tensor:
        calls.append(pixels.shape[0])
        return vae_mode_encoder(vae)(pixels)

    latent = spatial_latent(parse_chain(CHAIN), counting_encode, width, height)
    assert calls == [3] and latent.shape == (1, 4, 6, 8)
    per_box = []
    for box, color in [((100, 200, 500, 900), "red"), ((0, 0, 999, 300), "teal"), ((600, 100, 1000, 1000), "gold")]:
        canvas = Image.new("RGB", (width, height))
        x1, y1, x2, y2 = box
        ImageDraw.Draw(canvas).rectangle([x1 / 1000 * width, y1 / 1000 * height, x2 / 1000 * width,
                                          y2 / 1000 * height], fill=color)
        per_box.append(reference_encode(vae, canvas))
    expected = torch.stack(per_box).mean(dim=0)
    assert torch.allclose(latent, expected, atol=1e-5, rtol=1e-5), (latent - expected).abs().max()
    # Differently shaped batches give the same latent.
    chunked = spatial_latent(parse_chain(CHAIN), vae_mode_encoder(vae), width, height, batch_size=2)
    assert torch.allclose(chunked, expected, atol=1e-5, rtol=1e-5)
    # Each box matters: dropping the colour of one changes the mean.
    fewer = spatial_latent(parse_chain(CHAIN.replace(" (teal)", "")), vae_mode_encoder(vae), width, height)
    assert not torch.allclose(fewer, latent, atol=1e-3)


def test_no_coloured_box_is_the_black_image_latent(vae: AutoencoderKL) -> None:
    black = reference_encode(vae, Image.new("RGB", (64, 32)))
    for text in ["", f"{BS}(0,0),(500,500){BE} without a colour"]:
        latent = spatial_latent(parse_chain(text), vae_mode_encoder(vae), 64, 32)
        assert torch.equal(latent, black)
    assert black.abs().sum() > 0  # not zeros
    assert torch.equal(reference_latent(None, vae_mode_encoder(vae), 64, 32), black)


def test_unknown_colour_raises_before_encoding(vae: AutoencoderKL) -> None:
    with pytest.raises(ChainError, match="'mauveish'"):
        spatial_latent(parse_chain(f"{BS}(0,0),(500,500){BE} (mauveish)"), vae_mode_encoder(vae), 64, 64)


def test_reference_latent_matches_pil_bicubic(vae: AutoencoderKL) -> None:
    source = np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    # As ComfyUI's LoadImage hands it over: float32 k/255, here channels first.
    image = torch.from_numpy(source.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    latent = reference_latent(image, vae_mode_encoder(vae), 64, 32)
    expected = reference_encode(vae, Image.fromarray(source).resize((64, 32), Image.BICUBIC))
    assert torch.equal(latent, expected)
    assert latent.shape == (1, 4, 4, 8)


def test_float_image_rounds_back_to_every_uint8_level(vae: AutoencoderKL) -> None:
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    source = np.stack([levels, levels.T, 255 - levels], axis=-1)
    image = torch.from_numpy(source.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    seen = []
    reference_latent(image, lambda pixels: seen.append(pixels) or pixels[:, :, ::8, ::8], 16, 16)
    assert torch.equal(seen[0], pil_to_signed(Image.fromarray(source)))


def test_vae_mode_encoder_uses_the_vae_dtype(vae: AutoencoderKL) -> None:
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = vae_mode_encoder(vae)(pixels)
    with torch.no_grad():
        distribution = vae.encode(pixels).latent_dist
    assert torch.equal(latents, distribution.mode()) and torch.equal(latents, distribution.mean)
    half = AutoencoderKL(**vae_config()).to(torch.bfloat16).eval()
    assert vae_mode_encoder(half)(pixels).dtype == torch.bfloat16


@pytest.mark.parametrize(("image", "message"), [
    (torch.rand(2, 3, 8, 8), "batch of 2 images"),
    (torch.rand(1, 1, 8, 8), "grayscale"),
    (torch.rand(1, 4, 8, 8), "RGBA"),
    (torch.rand(1, 16, 16, 3), r"channels-last.*permute\(0, 3, 1, 2\)"),
    (torch.rand(3, 8, 8), r"image\[None\]"),
    (torch.rand(1, 3, 0, 8), "empty"),
    (torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8), "float"),
    (torch.rand(1, 3, 8, 8) * 2 - 1, r"\[-1, 1\]"),
    (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
    (torch.full((1, 3, 8, 8), 2.0), r"must lie in \[0, 1\]"),
    (np.zeros((1, 3, 8, 8)), "torch tensor"),
])
def test_bad_images_get_clear_errors(image: torch.Tensor, message: str) -> None:
    with pytest.raises(ImageInputError, match=message):
        check_rgb_image(image)
    with pytest.raises(ImageInputError, match=message):
        reference_latent(image, lambda pixels: pixels, 64, 64)


def test_output_size_must_be_multiple_of_8() -> None:
    for width, height in [(60, 64), (64, 0), (64.0, 64)]:
        with pytest.raises(SizeError, match="multiple of 8"):
            spatial_latent(parse_chain(""), lambda pixels: pixels, width, height)
        with pytest.raises(SizeError, match="multiple of 8"):
            reference_latent(None, lambda pixels: pixels, width, height)
    for batch_size in (0, -1, 1.5):
        with pytest.raises(LatentInputError, match="batch_size"):
            spatial_latent(parse_chain(""), lambda pixels: pixels, 64, 64, batch_size=batch_size)
