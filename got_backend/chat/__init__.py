"""A general Qwen2.5-VL chat runner over any Qwen2.5-VL folder (the base Qwen2.5-VL-3B-Instruct, the converted
GoT MLLM, a Think-Then-Generate-tuned Hugging Face folder): local files only, safetensors, no remote code.

API (got_backend.chat):

- `ChatModel.from_folder(folder, dtype="bf16", device="cpu", decoding="fast")`: load a folder
  (`weights.mllm_files.read_vlm`: refuses non-Qwen2.5-VL configs and pickle-only folders with an MLLMLoadError).
- `ChatModel.of(got_mllm)`: a GoTMLLM as a chat model, sharing its model and processor (loaded once); it keeps
  its own KV cache, so the reasoner's cache is untouched.
- `ChatModel.for_folder(folder, got_mllm, got_folder)`: `of(got_mllm)` when `folder` is GoT's own folder, else
  `from_folder(folder)` on the MLLM's device and dtype (the CLI's --think; --judge can use it too).
- `chat.sequence(text, image=None, system=None) -> TokenSequence`: the chat-templated question (image first,
  squashed to 448x448 like GoT's inputs; no `system`: Qwen's default system turn).
- `chat.generate(text, image=None, *, system=None, assistant_prefix="", settings=ReasoningSettings(),
  on_token=None, should_cancel=None, **changes) -> ChatAnswer(text, stop, new_tokens, sequence, prompt_length,
  stats)`: `settings` is reasoning.sampling.ReasoningSettings (max_new_tokens 1024, do_sample, temperature,
  top_p, top_k, seed, repetition_penalty, logits_processor), `changes` override its fields; greedy by default;
  stops on the folder's eos tokens (<|im_end|>, <|endoftext|>); `on_token` gets a reasoning.turns.TokenEvent
  per token (the stop token included); `should_cancel()` is checked between tokens and raises
  reasoning.turns.ReasoningCancelled with the KV cache dropped; `logits_processor`: transformers-style
  (input_ids [1, N], scores [1, V]) -> scores, e.g. tests/steering.py.
- `chat.first_token_probabilities(queries, words, *, system=None, logits_processor=(), should_cancel=None)
  -> FirstTokenProbabilities(probabilities [len(queries), len(words)] float32 CPU, token_ids)`: for each
  (text, image) query the softmax (over the whole vocabulary) at the first answer token, read at each word's
  token; words must be one token each (`chat.word_token(word)`, else ChatError). Queries run as right-padded
  batches (chat/batch.py), the cancel check between batches.
- `chat.release_caches()`, `chat.cached_tokens`, `chat.device`, `chat.dtype`, `chat.to(device)`.

In ComfyUI, nodes/model_management.py's ManagedVLM (the GOT_VLM socket, from the GoT VLM Loader) holds a
ChatModel under ComfyUI's model management: `managed.loaded()` returns it on its device.
"""

from .model import ChatAnswer, ChatError, ChatModel, FirstTokenProbabilities

__all__ = ["ChatAnswer", "ChatError", "ChatModel", "FirstTokenProbabilities"]
