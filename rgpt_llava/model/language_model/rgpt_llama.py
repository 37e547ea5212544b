"""RGPTConfig / RGPTLlamaForCausalLM: LLaVA's Llama classes with RegionGPT's region branch."""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM, LlavaLlamaModel

from rgpt_llava.compat import CACHE_KW, LLAMA_FORWARD_PARAMS, output_cache
from rgpt_llava.constants import IGNORE_INDEX
from rgpt_llava.model.rgpt_arch import RGPT_CONFIG_DEFAULTS, RGPTMetaForCausalLM, RGPTMetaModel


class RGPTConfig(LlavaConfig):
    model_type = "rgpt_llama"

    def __init__(self, **kwargs):
        for key, default in RGPT_CONFIG_DEFAULTS.items():
            kwargs.setdefault(key, default)
        super().__init__(**kwargs)


class RGPTLlamaModel(RGPTMetaModel, LlavaLlamaModel):
    config_class = RGPTConfig


# The frozen vision tower is loaded from config.mm_vision_tower (LLaVA's rule), never from a checkpoint's weights.
VISION_TOWER_PREFIX = "model.vision_tower."


class RGPTLlamaForCausalLM(RGPTMetaForCausalLM, LlavaLlamaForCausalLM):
    config_class = RGPTConfig
    # LLaVA's checkpoints (and RGPT's before they left the tower out) carry the tower's weights: not an error, and
    # not worth transformers' screen-long "weights not used" warning.
    _keys_to_ignore_on_load_unexpected = [r"^model\.vision_tower\."]

    def __init__(self, config):
        # Skip LlavaLlamaForCausalLM.__init__ (it would build a LlavaLlamaModel), as LLaVA itself skips Llama's.
        super(LlamaForCausalLM, self).__init__(config)
        self.model = RGPTLlamaModel(config)
        self.pretraining_tp = config.pretraining_tp
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_model(self):
        return self.model

    def save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):
        """transformers' save, without the frozen tower's weights (nothing reads them; 0.6 GB for CLIP-L in fp16).
        Kept where LLaVA's ``unfreeze_mm_vision_tower`` says the tower was trained."""
        if not getattr(self.config, "unfreeze_mm_vision_tower", False):
            if state_dict is None:
                state_dict = self.state_dict()
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith(VISION_TOWER_PREFIX)}
        return super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)

    # The signature is explicit (no bare **kwargs): generate() inspects it to decide what to pass.
    def forward(
        self,
        input_ids: torch.LongTensor = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        past_key_values: Optional[List[torch.FloatTensor]] = None,
        inputs_embeds: Optional[torch.FloatTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        images: Optional[torch.FloatTensor] = None,
        image_sizes: Optional[List[List[int]]] = None,
        region_masks: Optional[Sequence[Optional[torch.Tensor]]] = None,
        return_dict: Optional[bool] = None,
        cache_position: Optional[torch.LongTensor] = None,
        cache=None,
    ) -> Union[Tuple, CausalLMOutputWithPast]:
        # transformers >= 4.38 passes cache_position (gone again in 5.x); 5.x passes the KV cache as `cache`.
        if cache is not None:
            past_key_values = cache
        if inputs_embeds is None:
            (input_ids, position_ids, attention_mask, past_key_values, inputs_embeds, labels) = \
                self.prepare_inputs_labels_for_multimodal(
                    input_ids, position_ids, attention_mask, past_key_values, labels, images, image_sizes,
                    region_masks=region_masks)
        if labels is not None and getattr(self.config, "sparse_lm_head", False) and not output_hidden_states:
            return self._supervised_only_loss(input_ids, attention_mask, position_ids, past_key_values,
                                              inputs_embeds, labels, use_cache, output_attentions, return_dict)
        extra = {CACHE_KW: past_key_values}
        if cache_position is not None and "cache_position" in LLAMA_FORWARD_PARAMS:
            extra["cache_position"] = cache_position
        return LlamaForCausalLM.forward(
            self,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            **extra,
        )

    def _supervised_only_loss(self, input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, labels,
                              use_cache, output_attentions, return_dict):
        """Llama's shifted cross-entropy, with the LM head applied only to the positions that have a label.

        Instruction data supervises few tokens (the answers) of long sequences, and with a 32k vocabulary the
        [tokens x vocab] logits dominate a small model's cost. The loss is the same mean over supervised tokens;
        ``logits`` holds only the supervised positions' rows, in order.
        """
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             inputs_embeds=inputs_embeds, use_cache=use_cache,
                             output_attentions=output_attentions, return_dict=True, **{CACHE_KW: past_key_values})
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = self.lm_head(outputs.last_hidden_state[:, :-1][keep]).float()
        loss = nn.functional.cross_entropy(logits, targets[keep])
        past = output_cache(outputs)
        if return_dict is False:
            return (loss, logits) + tuple(v for v in (past, outputs.attentions) if v is not None)
        return CausalLMOutputWithPast(loss=loss, logits=logits, attentions=outputs.attentions, **{CACHE_KW: past})

    @torch.no_grad()
    def generate(
        self,
        inputs: Optional[torch.Tensor] = None,
        images: Optional[torch.Tensor] = None,
        image_sizes: Optional[torch.Tensor] = None,
        region_masks: Optional[Sequence[Optional[torch.Tensor]]] = None,
        **kwargs,
    ):
        position_ids = kwargs.pop("position_ids", None)
        attention_mask = kwargs.pop("attention_mask", None)
        if "inputs_embeds" in kwargs:
            raise NotImplementedError("`inputs_embeds` is not supported")
        if images is not None:
            (inputs, position_ids, attention_mask, _, inputs_embeds, _) = self.prepare_inputs_labels_for_multimodal(
                inputs, position_ids, attention_mask, None, None, images, image_sizes, region_masks=region_masks)
        else:
            if region_masks is not None and any(m is not None and len(m) for m in region_masks):
                raise ValueError("region_masks were given without images: regions are pooled from the image")
            inputs_embeds = self.get_model().embed_tokens(inputs)
        return LlamaForCausalLM.generate(
            self, position_ids=position_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, inputs_embeds=None, **kwargs):
        # Vision inputs are consumed once, in generate(); later steps see only text tokens. The KV cache comes as
        # `past_key_values` (4.x) or `cache` (5.x) among kwargs and goes on under the same name. generate() looks
        # for `inputs_embeds` in this signature.
        kwargs.pop("images", None)
        kwargs.pop("image_sizes", None)
        kwargs.pop("region_masks", None)
        return LlamaForCausalLM.prepare_inputs_for_generation(self, input_ids, inputs_embeds=inputs_embeds, **kwargs)


AutoConfig.register("rgpt_llama", RGPTConfig)
AutoModelForCausalLM.register(RGPTConfig, RGPTLlamaForCausalLM)
