"""RGPT on vLLM: region requests answered by vLLM's engine (continuous batching, paged KV cache).

- :mod:`rgpt_llava.vllm.plugin`: the ``vllm.general_plugins`` entry point (setup.cfg) that makes an RGPT checkpoint
  load in vLLM unchanged (its ``rgpt_llama`` config, its ``RGPTLlamaForCausalLM`` architecture);
- :mod:`rgpt_llava.vllm.multimodal`: RGPT as a multimodal model inside vLLM (the package's vision side, vLLM's Llama);
- :mod:`rgpt_llava.vllm.model`: the checkpoint's LLM alone in vLLM, for requests that bring input embeddings;
- :mod:`rgpt_llava.vllm.engine`: :class:`~rgpt_llava.vllm.engine.VLLMRegionEngine`, the serving engine's interface
  (``prepare`` / ``generate`` / ``answer``) on vLLM;
- :mod:`rgpt_llava.vllm.bench`: requests/s of the HF engine and of vLLM on the same requests.

Nothing else in the package imports this one; it needs the vllm stack (``RGPT_STACK=vllm``). docs/VLLM.md.
"""
