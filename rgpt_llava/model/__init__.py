"""Importing this package registers ``rgpt_llama`` with transformers' AutoConfig / AutoModelForCausalLM."""
from rgpt_llava.model.language_model.rgpt_llama import RGPTConfig, RGPTLlamaForCausalLM  # noqa: F401
