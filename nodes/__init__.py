"""ComfyUI adapters over got_backend: one module per node family, each exporting NODES."""
