"""The ``vllm.general_plugins`` entry point (setup.cfg): vLLM calls :func:`register` in every process it starts (the
engine core runs in a spawned process), before it reads a model's config."""

ARCHITECTURE = "RGPTLlamaForCausalLM"   # config.json's ``architectures`` of an RGPT checkpoint (rgpt_llava.convert)
# The same checkpoint as a multimodal model inside vLLM (rgpt_llava.vllm.multimodal), chosen with
# hf_overrides={"architectures": [MULTIMODAL_ARCHITECTURE]}.
MULTIMODAL_ARCHITECTURE = "RGPTLlamaMultiModal"


def register() -> None:
    """Make an RGPT checkpoint load in vLLM as it is: transformers learns the ``rgpt_llama`` config (importing
    rgpt_llava.model registers it) and vLLM's registry the architecture (imported lazily, by name). Idempotent:
    vLLM may call it more than once per process."""
    import rgpt_llava.model  # noqa: F401  (AutoConfig.register("rgpt_llama", ...))
    from vllm import ModelRegistry

    known = ModelRegistry.get_supported_archs()
    if ARCHITECTURE not in known:
        ModelRegistry.register_model(ARCHITECTURE, "rgpt_llava.vllm.model:RGPTLlamaForCausalLM")
    if MULTIMODAL_ARCHITECTURE not in known:
        ModelRegistry.register_model(MULTIMODAL_ARCHITECTURE, "rgpt_llava.vllm.multimodal:RGPTLlamaMultiModal")
