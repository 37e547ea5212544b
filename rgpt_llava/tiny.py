"""Tiny LLaVA-format checkpoints built from scratch, offline (tests, demo, benchmarks).

``python -m rgpt_llava.tiny --out DIR [--tokenizer PATH] [--tower siglip]`` writes ``DIR/clip`` (a tiny
``CLIPVisionModel`` with its image processor; ``DIR/siglip``, a tiny ``SiglipVisionModel``, with ``--tower siglip``),
``DIR/llava`` (a tiny LLaVA-1.5-style checkpoint: Llama + 2-layer MLP projector) and ``DIR/sam`` (a
tiny ``SamModel`` for ``--sam-model``) with random weights. Without ``--tokenizer`` a small SentencePiece tokenizer
is trained on the fly.
"""
import argparse
import os
from pathlib import Path

import torch

# LLaVA-1.5 / CLIP ViT-L/14-336 preprocessing constants.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

_CORPUS = """a photo of a cat sitting on a red sofa next to a window
the dog is playing with a ball on the green grass in the park
describe the region in detail and answer the question using the template region
what category name best describes the object in the image answer using coco category names
a man riding a motorcycle on the road near a rocket launch pad with blue sky
the astronaut is wearing a white suit and holding a helmet with the flag behind
a cup of coffee on a wooden table beside a plate of cookies and a spoon
no corresponding options found which one fits the description region one two three
the small red circle is left of the large blue square above the yellow triangle
USER: ASSISTANT: A chat between a curious human and an artificial intelligence assistant.
The assistant gives helpful, detailed, and polite answers to the human's questions.
"""


def train_tiny_tokenizer(out_dir, vocab_size: int = 320):
    """Train a small LLaMA-style SentencePiece model (unk=0, bos=1, eos=2, byte fallback) and save a LlamaTokenizer."""
    import sentencepiece as spm

    from rgpt_llava.tokenization import SentencePieceLlamaTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "corpus.txt"
    corpus.write_text(_CORPUS * 20)
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(out_dir / "tokenizer"), vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
        add_dummy_prefix=True, split_digits=True, minloglevel=2, num_threads=1,
    )
    corpus.unlink()
    tok = SentencePieceLlamaTokenizer(vocab_file=str(out_dir / "tokenizer.model"), legacy=False)
    tok.save_pretrained(str(out_dir))
    (out_dir / "tokenizer.vocab").unlink(missing_ok=True)
    return str(out_dir)


def build_tiny_clip(out_dir, image_size: int = 56, patch_size: int = 14, hidden_size: int = 32,
                    num_layers: int = 2, seed: int = 0, num_heads: int = None):
    """A random ``CLIPVisionModel`` + ``CLIPImageProcessor`` saved where LLaVA's ``mm_vision_tower`` can load it."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=hidden_size, intermediate_size=hidden_size * 2, num_hidden_layers=num_layers,
                           num_attention_heads=num_heads or max(1, hidden_size // 16), image_size=image_size,
                           patch_size=patch_size, projection_dim=hidden_size)
    CLIPVisionModel(cfg).save_pretrained(out_dir)
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                       image_mean=CLIP_MEAN, image_std=CLIP_STD, resample=3).save_pretrained(out_dir)
    return str(out_dir)


def build_tiny_siglip(out_dir, image_size: int = 64, patch_size: int = 8, hidden_size: int = 48,
                      num_layers: int = 3, seed: int = 0, num_heads: int = None):
    """A random ``SiglipVisionModel`` + ``SiglipImageProcessor`` (resize to ``image_size``, mean/std 0.5, no crop):
    the layout of a ``google/siglip-*`` vision tower. The defaults give an 8x8 patch grid and width 48, where the
    tiny CLIP has 4x4 and 32, so code assuming the CLIP grid fails on it."""
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    cfg = SiglipVisionConfig(hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                             num_hidden_layers=num_layers, num_attention_heads=num_heads or max(1, hidden_size // 16),
                             image_size=image_size, patch_size=patch_size)
    SiglipVisionModel(cfg).save_pretrained(out_dir)
    SiglipImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(out_dir)
    return str(out_dir)


def build_tiny_sam(out_dir, image_size: int = 64, seed: int = 0):
    """A random ``SamModel`` + ``SamProcessor`` (the layout of a ``facebook/sam-vit-base`` download, at a width of
    32 and a 64-pixel input instead of 1024) for ``--sam-model``."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor
    from transformers.models.sam.configuration_sam import (SamMaskDecoderConfig, SamPromptEncoderConfig,
                                                           SamVisionConfig)

    patch = 8
    torch.manual_seed(seed)
    cfg = SamConfig(
        vision_config=SamVisionConfig(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                                      image_size=image_size, patch_size=patch, mlp_dim=64, global_attn_indexes=[1],
                                      window_size=4, num_pos_feats=8),
        prompt_encoder_config=SamPromptEncoderConfig(hidden_size=16, image_size=image_size, patch_size=patch,
                                                     mask_input_channels=4),
        mask_decoder_config=SamMaskDecoderConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                                 mlp_dim=32, iou_head_hidden_dim=16))
    SamModel(cfg).save_pretrained(out_dir)
    SamProcessor(SamImageProcessor(size={"longest_edge": image_size},
                                   pad_size={"height": image_size, "width": image_size})).save_pretrained(out_dir)
    return str(out_dir)


def tiny_llava_config(tokenizer, vision_dir, hidden_size: int = 64, num_layers: int = 2, **overrides):
    from llava.model.language_model.llava_llama import LlavaConfig
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    from rgpt_llava.model.vision_tower import SIGLIP_MODEL_TYPES, tower_model_type

    siglip = tower_model_type(str(vision_dir)) in SIGLIP_MODEL_TYPES
    vis = (SiglipVisionConfig if siglip else CLIPVisionConfig).from_pretrained(vision_dir)
    cfg = dict(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=0,
        mm_vision_tower=str(vision_dir), mm_hidden_size=vis.hidden_size, mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2, mm_vision_select_feature="patch", mm_patch_merge_type="flat",
        image_aspect_ratio="pad", mm_use_im_start_end=False, mm_use_im_patch_token=False,
        tokenizer_padding_side="right", tokenizer_model_max_length=1024, use_mm_proj=True,
        tune_mm_mlp_adapter=False, freeze_mm_mlp_adapter=False, mm_projector_lr=None,
        torch_dtype="float32",
    )
    cfg.update(overrides)
    return LlavaConfig(**cfg)


def build_tiny_llava(out_dir, tokenizer_dir, vision_dir, seed: int = 0, **config_overrides):
    """A random LLaVA-1.5-style checkpoint (Llama + mlp2x_gelu projector; tower loaded from ``vision_dir``, CLIP or
    SigLIP)."""
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    from rgpt_llava.model.vision_tower import rgpt_tower_factory
    from rgpt_llava.tokenization import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    # LLaVA's own model reads a SigLIP folder's config as CLIP's (a warning); RGPT's factory reads it as SigLIP's.
    with rgpt_tower_factory():
        model = LlavaLlamaForCausalLM(tiny_llava_config(tokenizer, vision_dir, **config_overrides))
    # Llama's default init (std 0.02) gives near-uniform logits; widen it so random models say varied things.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.2)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def build_tiny_llm(out_dir, tokenizer_dir, hidden_size: int = 64, num_layers: int = 2, seed: int = 0,
                   num_heads: int = 4, init_std: float = 0.02, tie_word_embeddings: bool = False):
    """A random Vicuna-style ``LlamaForCausalLM`` (the base LLM that LLaVA's training starts from).

    ``init_std`` is the config's ``initializer_range`` (std of every linear and embedding weight); transformers'
    0.02 suits widths of 1-4k, while 1/sqrt(hidden_size) is the fan-in scale of a narrow model.
    ``tie_word_embeddings`` shares the input embeddings with the LM head (half the weights of a narrow model with
    LLaMA's 32k vocabulary)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rgpt_llava.tokenization import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                      num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
                      max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=0, torch_dtype="float32",
                      initializer_range=init_std, tie_word_embeddings=tie_word_embeddings)
    LlamaForCausalLM(cfg).save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True,
                        help="output folder (gets clip/ or siglip/, llava/, sam/ and maybe tokenizer/)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder; default: train a tiny SentencePiece one")
    parser.add_argument("--tower", choices=("clip", "siglip"), default="clip",
                        help="the vision tower of the tiny LLaVA: CLIP (LLaVA-1.5's) or SigLIP (the paper's Table 7)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="the tower's input size (default 56 for CLIP, 64 for SigLIP: 4x4 / 8x8 patch grids)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    patch = 8 if args.tower == "siglip" else 14
    size = args.image_size or (64 if args.tower == "siglip" else 56)
    if size < 2 * patch or size % patch:
        parser.error(f"--image-size {size}: the tiny {args.tower} tower needs a multiple of its patch size {patch}, "
                     f"at least {2 * patch}")
    out = Path(args.out)
    if args.tokenizer is not None and not os.path.isdir(args.tokenizer):
        parser.error(f"--tokenizer {args.tokenizer}: no such folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parser.error(f"--out {out}: cannot create it ({e.strerror})")
    tok_dir = args.tokenizer
    if tok_dir is None:
        tok_dir = train_tiny_tokenizer(out / "tokenizer")
    if args.tower == "siglip":
        tower = build_tiny_siglip(out / "siglip", image_size=size, patch_size=patch, seed=args.seed)
    else:
        tower = build_tiny_clip(out / "clip", image_size=size, patch_size=patch, seed=args.seed)
    llava = build_tiny_llava(out / "llava", tok_dir, tower, seed=args.seed)
    sam = build_tiny_sam(out / "sam", seed=args.seed)
    print(f"tiny LLaVA checkpoint (random weights): {llava}\ntiny {args.tower} tower: {tower}\ntiny SAM: {sam}")


if __name__ == "__main__":
    main()
