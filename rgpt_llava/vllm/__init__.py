"""RGPT on vLLM: region requests answered by vLLM's engine (continuous batching, paged KV cache).

- :mod:`rgpt_llava.vllm.plugin`: the ``vllm.general_plugins`` entry point (setup.cfg) that makes an RGPT checkpoint
  load in vLLM unchanged (its ``rgpt_llama`` config, its ``RGPTLlamaForCausalLM`` architecture);
- :mod:`rgpt_llava.vllm.model`: that architecture inside vLLM: vLLM's Llama, fed the spliced input embeddings;
- :mod:`rgpt_llava.vllm.engine`: :class:`~rgpt_llava.vllm.engine.VLLMRegionEngine`, the serving engine's interface
  (``prepare`` / ``generate`` / ``answer``) with vLLM running the LLM.

Why the prompt-embeddings path and not a multimodal model inside vLLM: docs/VLLM.md. Nothing here is imported by the
rest of the package; it needs the vllm stack (``RGPT_STACK=vllm``).
"""
