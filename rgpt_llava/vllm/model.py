"""An RGPT checkpoint's LLM inside vLLM.

RGPT's language model is LLaVA-1.5's Llama, unchanged: the vision side (tower, refiner, projector) only makes input
embeddings. So inside vLLM the architecture is vLLM's own Llama, which loads the checkpoint's LLM weights straight
from its safetensors (no copy, no conversion) and skips the vision side's; requests bring their input embeddings
(vLLM's ``prompt_embeds``), spliced by :class:`rgpt_llava.vllm.engine.VLLMRegionEngine` with the package's own vision
code. docs/VLLM.md says why this and not a multimodal model in vLLM.
"""
from typing import Iterable, Set, Tuple

import torch
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.utils import AutoWeightsLoader

# Checkpoint keys of the vision side (rgpt_arch.RGPTMetaModel), computed outside vLLM: vLLM's Llama has no such
# modules, and its loader would refuse them.
VISION_PREFIXES = ("model.vision_tower.", "model.mm_projector.", "model.mm_refiner.")


class RGPTLlamaForCausalLM(LlamaForCausalLM):
    """vLLM's Llama for the checkpoint's ``RGPTLlamaForCausalLM`` architecture, without the vision weights."""

    def load_weights(self, weights: Iterable[Tuple[str, torch.Tensor]]) -> Set[str]:
        llm_weights = ((name, w) for name, w in weights if not name.startswith(VISION_PREFIXES))
        return AutoWeightsLoader(self).load_weights(llm_weights)
