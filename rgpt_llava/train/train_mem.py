"""LLaVA's ``train_mem`` for RGPT: the same entry with FlashAttention-2 (needs CUDA and flash-attn)."""
from rgpt_llava.train.train import train

if __name__ == "__main__":
    train(attn_implementation="flash_attention_2")
