"""Convert a LLaVA-1.5 checkpoint into an RGPT checkpoint.

    python -m rgpt_llava.convert --llava-path SRC [--model-base BASE] --output DST [--refiner deconv_residual]
    python -m rgpt_llava.convert --llava-hf-path SRC --output DST [--vision-tower-out DIR] [--refiner ...]

With ``--llava-path``, SRC is a full LLaVA checkpoint, or a projector-only one (``mm_projector.bin`` + config) on
``--model-base``. With ``--llava-hf-path``, SRC is transformers' own format (``LlavaForConditionalGeneration``, e.g.
``llava-hf/llava-1.5-7b-hf``): its CLIP or SigLIP tower is saved as a ``CLIPVisionModel`` / ``SiglipVisionModel``
folder with its image processor (default DST/vision_tower) that the RGPT config names by absolute path, and the
rest maps onto LLaVA's layout (``linear_1``/``linear_2`` -> ``mm_projector.0``/``.2``). The llava-hf chat template,
"USER: <image>\\n... ASSISTANT:", is Vicuna v1's: use ``--conv-mode vicuna_v1`` (RGPT's default; it adds the system
sentence LLaVA-1.5 was trained with, which llava-hf's template leaves to the caller).
The default refiner, ``deconv_residual``, starts as exact 4x nearest-neighbour upsampling plus a zero-initialised
deconvolution branch: the adaptive pool maps it back exactly, so on image-only prompts the converted model gives the
source's logits. ``--refiner deconv`` is the paper's plain two-deconvolution design (random init: image features
change until it is trained); ``bilinear``, ``deconv+bilinear`` and ``none`` are the paper's Table 6 ablations.
"""
import argparse
import json
import os
import re
import sys

import torch
from safetensors.torch import load_file

from rgpt_llava.constants import LORA_ADAPTER_FILE, NON_LORA_FILE, STAGE1_FILE
from rgpt_llava.model.builder import CheckpointError, WEIGHT_FILES, strip_prefixes, read_config
from rgpt_llava.model.language_model.rgpt_llama import RGPTConfig, RGPTLlamaForCausalLM
from rgpt_llava.model.region_encoder import REFINER_TYPES, build_refiner
from rgpt_llava.paths import output_clash
from rgpt_llava.tokenization import load_tokenizer


def rgpt_config_from_llava(llava_config: dict, refiner: str = "deconv_residual", merge_size=None,
                           refiner_act: str = "gelu", refiner_scale=None) -> RGPTConfig:
    cfg = {k: v for k, v in llava_config.items() if k not in ("model_type", "architectures", "transformers_version")}
    cfg.update(mm_refiner_type=refiner, mm_refiner_act=refiner_act, mm_refiner_scale=refiner_scale,
               mm_merge_size=list(merge_size) if merge_size else None)
    config = RGPTConfig(**cfg)
    config.architectures = ["RGPTLlamaForCausalLM"]
    return config


# Files by which the builder recognises a checkpoint and its kind (builder.describe_checkpoint): a conversion must not
# leave old ones beside the new (an adapter_config.json would make the result read as a LoRA checkpoint).
CHECKPOINT_FILE = re.compile(r"config\.json|adapter_model\.(safetensors|bin)|"
                             r"(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?|"
                             + "|".join(re.escape(f) for f in (LORA_ADAPTER_FILE, NON_LORA_FILE, STAGE1_FILE)))


def check_output(output, sources, overwrite=False, flag="--output", others=()):
    """Before anything is read: ``output`` is none of the ``sources`` ((flag, folder) pairs; writing there would
    replace a source) nor of the ``others`` written ((flag, folder) pairs: the extracted tower's folder), by the one
    output-clash rule (:func:`rgpt_llava.paths.output_clash`), and a folder already holding a checkpoint only with
    ``overwrite`` (its checkpoint files are then removed just before the new ones are written, its other files
    kept)."""
    clash = output_clash({flag: output, **dict(others)}, dict(sources), folder="the new checkpoint")
    if clash:
        raise CheckpointError(clash)
    if os.path.exists(output) and not os.path.isdir(output):
        raise CheckpointError(f"{flag} {output}: a file, not a folder")
    old = checkpoint_files(output)
    if old and not overwrite:
        raise CheckpointError(f"{flag} {output} already holds a checkpoint ({', '.join(old[:4])}"
                              f"{', ...' if len(old) > 4 else ''}); pass --overwrite to replace it")


def checkpoint_files(folder):
    return sorted(f for f in os.listdir(folder) if CHECKPOINT_FILE.fullmatch(f)) if os.path.isdir(folder) else []


def clear_checkpoint_files(folder):
    for f in checkpoint_files(folder):
        os.remove(os.path.join(folder, f))


def convert(llava_path, output, model_base=None, refiner="deconv_residual", merge_size=None, refiner_act="gelu",
            refiner_scale=None, seed=0, overwrite=False):
    src_cfg = read_config(llava_path)
    model_type = src_cfg.get("model_type")
    if model_type == "rgpt_llama":
        raise CheckpointError(f"{llava_path} is already an RGPT checkpoint")
    if model_type != "llava_llama":
        raise CheckpointError(f"{llava_path}: expected a LLaVA-1.5 (llava_llama) checkpoint, got model_type "
                              f"{model_type!r}")
    if "mm_vision_tower" not in src_cfg:
        raise CheckpointError(f"{llava_path}: config.json has no mm_vision_tower; not a multimodal LLaVA checkpoint")
    full = any(os.path.exists(os.path.join(llava_path, f)) for f in WEIGHT_FILES)
    if not full:
        if not os.path.isfile(os.path.join(llava_path, STAGE1_FILE)):
            raise CheckpointError(f"{llava_path}: neither model weights nor {STAGE1_FILE} found")
        if model_base is None:
            raise CheckpointError(f"{llava_path} holds only {STAGE1_FILE}: pass --model-base (the base LLM)")

    check_output(output, [("--llava-path", llava_path), ("--model-base", model_base)], overwrite)
    config = rgpt_config_from_llava(src_cfg, refiner, merge_size, refiner_act, refiner_scale)
    dtype = getattr(torch, str(src_cfg.get("torch_dtype") or "float32"))
    weights_from = llava_path if full else model_base
    model, info = RGPTLlamaForCausalLM.from_pretrained(weights_from, config=config, torch_dtype=dtype,
                                                       output_loading_info=True)
    provided = set()
    if not full:
        state = strip_prefixes(torch.load(os.path.join(llava_path, STAGE1_FILE), map_location="cpu",
                                           weights_only=True))
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
        provided = set(state)
    _check_loaded(weights_from, info, provided)
    return _save_rgpt(model, config, dtype, seed, output,
                      llava_path if os.path.exists(os.path.join(llava_path, "tokenizer_config.json")) else model_base)


# llava-hf key prefix -> RGPT key prefix, for both layouts transformers has written (older, then newer).
LLAVA_HF_PREFIXES = (
    ("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."),
    ("multi_modal_projector.linear_1.", "model.mm_projector.0."),
    ("multi_modal_projector.linear_2.", "model.mm_projector.2."),
    ("model.language_model.", "model."), ("lm_head.", "lm_head."),
    ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
    ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
)
# ... and the prefixes of the vision tower, whose keys below them are CLIPVisionModel's / SiglipVisionModel's own.
LLAVA_HF_TOWER_PREFIXES = ("vision_tower.", "model.vision_tower.")
# vision_feature_select_strategy -> LLaVA's mm_vision_select_feature, for a CLIP tower ('default' drops the CLS token)
SELECT_FEATURE = {"default": "patch", "full": "cls_patch"}
# SigLIP has no CLS token: 'full' is the whole patch grid (SiglipVisionTower's 'patch'); llava-hf's 'default' drops
# the first token all the same, leaving a grid short of one patch.
SIGLIP_SELECT_FEATURE = {"full": "patch"}
# vision_config.model_type -> (model class, image processor class) of the extracted tower, by transformers' names
TOWER_CLASSES = {"clip_vision_model": ("CLIPVisionModel", "CLIPImageProcessor"),
                 "siglip_vision_model": ("SiglipVisionModel", "SiglipImageProcessor")}


def select_feature(vision_type: str, strategy: str):
    """LLaVA's mm_vision_select_feature for llava-hf's strategy on this tower, or None where RGPT cannot take it."""
    return (SIGLIP_SELECT_FEATURE if vision_type == "siglip_vision_model" else SELECT_FEATURE).get(strategy)


def check_llava_hf_config(path, cfg: dict):
    """Refuse, naming what was found, every llava-hf model that RGPT's LLaVA-1.5 layout cannot hold."""
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    if model_type == "llava_next" or "image_grid_pinpoints" in cfg or any("Next" in a for a in archs):
        raise CheckpointError(f"{path}: a LLaVA-NeXT (anyres) checkpoint (model_type {model_type!r}, {archs}): RGPT "
                              f"takes one image grid per image, not anyres tiles; only LLaVA-1.5 can be converted")
    if model_type in ("llava_llama", "rgpt_llama"):
        raise CheckpointError(f"{path}: model_type {model_type!r} is LLaVA's/RGPT's own format, not llava-hf's "
                              f"(use --llava-path for a LLaVA checkpoint)")
    if model_type != "llava":
        raise CheckpointError(f"{path}: expected a llava-hf LlavaForConditionalGeneration (model_type 'llava'), got "
                              f"model_type {model_type!r}")
    # transformers' LlavaConfig fills a missing sub-config with Llama / CLIP: so do these defaults.
    text_type = (cfg.get("text_config") or {}).get("model_type", "llama")
    if text_type != "llama":
        raise CheckpointError(f"{path}: the language model is {text_type!r}; RGPT builds on LLaVA's Llama "
                              f"(text_config.model_type 'llama')")
    vision_type = (cfg.get("vision_config") or {}).get("model_type", "clip_vision_model")
    if vision_type not in TOWER_CLASSES:
        raise CheckpointError(f"{path}: the vision tower is {vision_type!r}; only CLIP (clip_vision_model) and "
                              f"SigLIP (siglip_vision_model) towers convert")
    layer = cfg.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise CheckpointError(f"{path}: vision_feature_layer {layer!r} concatenates several layers; LLaVA's tower "
                              f"selects one (mm_vision_select_layer)")
    strategy = cfg.get("vision_feature_select_strategy", "default")
    if vision_type == "siglip_vision_model" and select_feature(vision_type, strategy) != "patch":
        raise CheckpointError(f"{path}: vision_feature_select_strategy {strategy!r} on a SigLIP tower drops its first "
                              f"patch (SigLIP has no CLS token); RGPT's region encoder needs the whole patch grid "
                              f"('full')")
    if vision_type != "siglip_vision_model" and strategy != "default":
        raise CheckpointError(f"{path}: vision_feature_select_strategy {strategy!r} (LLaVA's "
                              f"{SELECT_FEATURE.get(strategy, strategy)!r}) keeps the CLS token; RGPT's region "
                              f"encoder needs the patch grid alone ('default', LLaVA's 'patch')")
    act = cfg.get("projector_hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"{path}: projector_hidden_act {act!r}; LLaVA's mlp2x_gelu projector uses 'gelu'")


def read_weights(path) -> dict:
    """Every tensor of a transformers checkpoint folder: one file or shards, safetensors or .bin."""
    loaders = (("model.safetensors", load_file),
               ("pytorch_model.bin", lambda f: torch.load(f, map_location="cpu", weights_only=True)))
    for name, load in loaders:
        index = os.path.join(path, name + ".index.json")
        if os.path.isfile(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        elif os.path.isfile(os.path.join(path, name)):
            files = [name]
        else:
            continue
        state = {}
        for file in files:
            if not os.path.isfile(os.path.join(path, file)):
                raise CheckpointError(f"{path}: weight shard {file} (listed in {os.path.basename(index)}) is missing")
            state.update(load(os.path.join(path, file)))
        return state
    raise CheckpointError(f"{path}: no model weights (none of {WEIGHT_FILES})")


def split_llava_hf_weights(path, state: dict):
    """llava-hf weights -> (RGPT's LLM + projector weights, the vision tower's weights)."""
    llm, tower, unknown = {}, {}, []
    for key, value in state.items():
        tower_prefix = next((p for p in LLAVA_HF_TOWER_PREFIXES if key.startswith(p)), None)
        prefix = next((p for p in LLAVA_HF_PREFIXES if key.startswith(p[0])), None)
        if tower_prefix:
            tower[key[len(tower_prefix):]] = value
        elif prefix:
            llm[prefix[1] + key[len(prefix[0]):]] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{path}: weights outside a LLaVA-1.5 model: {unknown[:8]}")
    return llm, tower


def save_vision_tower(path, vision_config, state: dict, out_dir, dtype):
    """The llava-hf tower as a ``CLIPVisionModel`` / ``SiglipVisionModel`` folder with its image processor (what
    mm_vision_tower names; RGPT picks the tower class by the folder's config.json)."""
    import transformers

    model_name, processor_name = TOWER_CLASSES[vision_config.model_type]
    if not os.path.isfile(os.path.join(path, "preprocessor_config.json")):
        raise CheckpointError(f"{path}: no preprocessor_config.json (the image processor the tower loads beside "
                              f"it); copy it from the llava-hf repository")
    tower, info = getattr(transformers, model_name).from_pretrained(None, config=vision_config, state_dict=state,
                                                                    torch_dtype=dtype, output_loading_info=True)
    if info["missing_keys"] or info["unexpected_keys"]:
        raise CheckpointError(f"{path}: vision tower weights do not match its vision_config: missing "
                              f"{sorted(info['missing_keys'])[:8]}, unexpected {sorted(info['unexpected_keys'])[:8]}")
    clear_checkpoint_files(out_dir)  # check_output allowed it: nothing there, or --overwrite
    tower.save_pretrained(out_dir, safe_serialization=True)
    # The llava-hf folder's image processor as the tower's class reads it (its type field may say LlavaProcessor's).
    getattr(transformers, processor_name).from_pretrained(path).save_pretrained(out_dir)
    return os.path.abspath(out_dir)


def llava_config_from_hf(hf_config, tower_dir: str, vocab_size: int) -> dict:
    """The LLaVA-1.5 config.json (llava_llama conventions) of the model a transformers LlavaConfig describes."""
    cfg = {k: v for k, v in hf_config.text_config.to_dict().items()
           if not k.startswith("_") and k not in ("dtype", "torch_dtype")}
    cfg.update(
        # The saved embedding's rows (32064 for llava-1.5-7b-hf: llava-hf's <image>, <pad> and alignment rows kept
        # unused, since RGPT marks images with IMAGE_TOKEN_INDEX in input ids, not with a vocabulary token).
        vocab_size=vocab_size,
        mm_vision_tower=tower_dir, mm_hidden_size=hf_config.vision_config.hidden_size,
        mm_projector_type="mlp2x_gelu", mm_vision_select_layer=hf_config.vision_feature_layer,
        mm_vision_select_feature=select_feature(hf_config.vision_config.model_type,
                                                hf_config.vision_feature_select_strategy),
        mm_patch_merge_type="flat", image_aspect_ratio="pad",  # LLaVA-1.5's preprocessing (docs/MODEL.md)
        mm_use_im_start_end=False, mm_use_im_patch_token=False, use_mm_proj=True, tokenizer_padding_side="right",
        tune_mm_mlp_adapter=False, freeze_mm_mlp_adapter=False, unfreeze_mm_vision_tower=False,
    )
    return cfg


def convert_llava_hf(llava_hf_path, output, vision_tower_out=None, refiner="deconv_residual", merge_size=None,
                     refiner_act="gelu", refiner_scale=None, seed=0, overwrite=False):
    """A llava-hf ``LlavaForConditionalGeneration`` folder -> an RGPT checkpoint (+ its CLIP tower folder)."""
    from transformers import LlavaConfig as HFLlavaConfig

    check_llava_hf_config(llava_hf_path, read_config(llava_hf_path))
    tower_out = vision_tower_out or os.path.join(output, "vision_tower")
    # the tower's folder may not be the checkpoint's either: its config.json and weights would be replaced
    check_output(output, [("--llava-hf-path", llava_hf_path)], overwrite,
                 others=[("--vision-tower-out", vision_tower_out)])
    check_output(tower_out, [("--llava-hf-path", llava_hf_path)], overwrite,
                 flag="--vision-tower-out" if vision_tower_out else "--output")
    llm, tower = split_llava_hf_weights(llava_hf_path, read_weights(llava_hf_path))
    if "model.embed_tokens.weight" not in llm:
        raise CheckpointError(f"{llava_hf_path}: weights do not match a LLaVA-1.5 model: missing "
                              f"['model.embed_tokens.weight']")
    embed = llm["model.embed_tokens.weight"]
    hf_config = HFLlavaConfig.from_pretrained(llava_hf_path)
    tower_dir = save_vision_tower(llava_hf_path, hf_config.vision_config, tower, tower_out, embed.dtype)
    config = rgpt_config_from_llava(llava_config_from_hf(hf_config, tower_dir, embed.shape[0]), refiner, merge_size,
                                    refiner_act, refiner_scale)
    model, info = RGPTLlamaForCausalLM.from_pretrained(None, config=config, state_dict=llm, torch_dtype=embed.dtype,
                                                       output_loading_info=True)
    _check_loaded(llava_hf_path, info)
    model.config.name_or_path = llava_hf_path  # the source, as convert() records it (not the in-memory "None")
    return _save_rgpt(model, config, embed.dtype, seed, output, llava_hf_path)


def _check_loaded(weights_from, info, provided=()):
    """Everything but the new refiner must come from the source; nothing but the tower may be left over."""
    missing = [k for k in info["missing_keys"] if k not in provided and not k.startswith("model.mm_refiner.")]
    unexpected = [k for k in info["unexpected_keys"] if not k.startswith("model.vision_tower.")]
    if missing or unexpected:
        raise CheckpointError(f"{weights_from}: weights do not match a LLaVA-1.5 model: missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}")


def _save_rgpt(model, config, dtype, seed, output, tokenizer_from):
    # The refiner is new: build it afresh (weights the loader left for missing keys are not initialised).
    torch.manual_seed(seed)
    model.get_model().mm_refiner = build_refiner(config).to(dtype)
    os.makedirs(output, exist_ok=True)
    clear_checkpoint_files(output)  # check_output allowed it: nothing there, or --overwrite
    model.save_pretrained(output, safe_serialization=True)
    load_tokenizer(tokenizer_from).save_pretrained(output)
    return output


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--llava-path", help="LLaVA-1.5 checkpoint folder (full, or mm_projector.bin)")
    src.add_argument("--llava-hf-path", help="llava-hf checkpoint folder (transformers' LlavaForConditionalGeneration)")
    p.add_argument("--model-base", default=None, help="base LLM folder, for a projector-only LLaVA checkpoint")
    p.add_argument("--vision-tower-out", default=None,
                   help="with --llava-hf-path: folder for the extracted vision tower (default OUTPUT/vision_tower)")
    p.add_argument("--output", required=True, help="folder for the RGPT checkpoint")
    p.add_argument("--refiner", default="deconv_residual", choices=REFINER_TYPES)
    p.add_argument("--refiner-act", default="gelu", choices=["gelu", "none"])
    p.add_argument("--refiner-scale", type=int, default=None, help="total upsampling of the bilinear refiners")
    p.add_argument("--merge-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="image-token grid (default: the vision tower's patch grid)")
    p.add_argument("--seed", type=int, default=0, help="seed for the refiner's initialisation")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the checkpoint an existing --output holds (its other files are kept)")
    args = p.parse_args(argv)
    if args.llava_hf_path and args.model_base:
        p.error("--model-base is for --llava-path (a llava-hf folder holds the whole model)")
    if args.llava_path and args.vision_tower_out:
        p.error("--vision-tower-out is for --llava-hf-path (a LLaVA checkpoint names its tower in mm_vision_tower)")
    refiner = (args.refiner, args.merge_size, args.refiner_act, args.refiner_scale, args.seed, args.overwrite)
    try:
        if args.llava_hf_path:
            out = convert_llava_hf(args.llava_hf_path, args.output, args.vision_tower_out, *refiner)
        else:
            out = convert(args.llava_path, args.output, args.model_base, *refiner)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"RGPT checkpoint written to {out} (refiner: {args.refiner})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
