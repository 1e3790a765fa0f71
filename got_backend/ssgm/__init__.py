"""The Semantic-Spatial Guidance Module and rendering (docs/ALGORITHM.md §5, §7–§9): the chain's boxes as
pixels and latents, the four guidance branches, DDPM denoising and VAE decoding."""
