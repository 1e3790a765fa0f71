"""Model files (docs/ALGORITHM.md §2): reading the release and converted folders safely, merging the LoRA,
renaming to the installed transformers' names, writing safetensors, and locating models in ComfyUI's folders."""
