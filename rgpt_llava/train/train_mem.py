"""LLaVA's ``train_mem`` entry (the one its DeepSpeed scripts launch), for RGPT.

LLaVA's version demands FlashAttention-2 and fails wherever flash_attn cannot run; RGPT's ``train()`` takes
FlashAttention-2 where it can run and SDPA elsewhere (RGPT_ATTN overrides), so this is the same entry as
``python -m rgpt_llava.train.train``, kept under LLaVA's name for its scripts and habits.
"""
from rgpt_llava.train.train import train

if __name__ == "__main__":
    train()
