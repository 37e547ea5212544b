"""Region-aware chat, LLaVA's ``llava.serve.cli`` with regions.

    python -m rgpt_llava.serve.cli --model-path P [--model-base B] --image-file F \
        --region box:x1,y1,x2,y2 --region mask:m.png ... [--query "Describe <region1>"]

With ``--query`` it prints one answer; otherwise it opens an interactive chat (empty line or EOF ends it).
Region specs: ``box:x1,y1,x2,y2`` (original pixels), ``mask:FILE.png``, ``polygon:x1,y1,x2,y2,...``,
``rle:FILE.json`` (a COCO RLE). ``<region>`` takes the regions in order; ``<regionN>`` names the N-th.
"""
import argparse
import sys

import torch
from PIL import Image

from llava.conversation import conv_templates
from llava.mm_utils import process_images

from rgpt_llava.constants import DEFAULT_IMAGE_TOKEN
from rgpt_llava.geometry import parse_region, process_regions
from rgpt_llava.mm_utils import check_region_references, tokenizer_region_token
from rgpt_llava.model.builder import CheckpointError, load_pretrained_model


def load_image(path: str) -> Image.Image:
    try:
        return Image.open(path).convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"--image-file {path}: no such file") from None
    except OSError as e:
        raise ValueError(f"--image-file {path}: not a readable image ({e})") from None


def describe_regions(regions):
    lines = []
    for r in regions:
        box = ", ".join(f"{v:g}" for v in r.box)
        lines.append(f"  region {r.index + 1}: {r.kind}, box [{box}]")
    return "\n".join(lines)


class RegionChat:
    """One image, its regions and a conversation; ``ask`` adds a turn and returns the answer."""

    def __init__(self, tokenizer, model, image_processor, image, regions, conv_mode="vicuna_v1",
                 temperature=0.2, max_new_tokens=512):
        if conv_mode not in conv_templates:
            raise ValueError(f"--conv-mode {conv_mode!r} is unknown; choose one of {sorted(conv_templates)}")
        self.tokenizer, self.model = tokenizer, model
        self.conv = conv_templates[conv_mode].copy()
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        aspect = getattr(model.config, "image_aspect_ratio", "pad")
        dtype = next(model.get_model().mm_projector.parameters()).dtype
        self.image_tensor = process_images([image], image_processor, model.config).to(model.device, dtype=dtype)
        self.image_size = image.size
        self.region_masks = process_regions(regions, image.size, image_processor, aspect).to(model.device)
        self.num_regions = len(regions)
        self.first = True

    def ask(self, message: str, require_all_regions: bool = False) -> str:
        if self.first:
            if DEFAULT_IMAGE_TOKEN not in message:
                message = DEFAULT_IMAGE_TOKEN + "\n" + message
            self.first = False
        self.conv.append_message(self.conv.roles[0], message)
        self.conv.append_message(self.conv.roles[1], None)
        prompt = self.conv.get_prompt()
        try:
            check_region_references(prompt, self.num_regions, require_all=require_all_regions)
        except ValueError:
            self.conv.messages = self.conv.messages[:-2]
            raise
        input_ids = tokenizer_region_token(prompt, self.tokenizer, return_tensors="pt").unsqueeze(0)
        sampling = dict(do_sample=True, temperature=self.temperature) if self.temperature > 0 else \
            dict(do_sample=False)
        with torch.inference_mode():
            output_ids = self.model.generate(
                input_ids.to(self.model.device), images=self.image_tensor, image_sizes=[self.image_size],
                region_masks=[self.region_masks], max_new_tokens=self.max_new_tokens, use_cache=True, **sampling)
        answer = self.tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0].strip()
        self.conv.messages[-1][-1] = answer
        return answer


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True)
    p.add_argument("--model-base", default=None)
    p.add_argument("--image-file", required=True)
    p.add_argument("--region", action="append", default=[], metavar="SPEC",
                   help="box:x1,y1,x2,y2 | mask:FILE.png | polygon:x1,y1,... | rle:FILE.json (repeatable)")
    p.add_argument("--query", default=None, help="one question; without it, an interactive chat")
    p.add_argument("--conv-mode", default="vicuna_v1")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--load-8bit", action="store_true")
    p.add_argument("--load-4bit", action="store_true")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        image = load_image(args.image_file)
        # Parse regions before loading the model: bad input fails in a second, not after minutes of loading.
        regions = [parse_region(spec, i, image.size) for i, spec in enumerate(args.region)]
        if args.query is not None:
            check_region_references(args.query, len(regions), require_all=True)
        tokenizer, model, image_processor, _ = load_pretrained_model(
            args.model_path, args.model_base, None, load_8bit=args.load_8bit, load_4bit=args.load_4bit,
            device=args.device)
        chat = RegionChat(tokenizer, model, image_processor, image, regions, args.conv_mode, args.temperature,
                          args.max_new_tokens)
    except (ValueError, FileNotFoundError, CheckpointError, NotImplementedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"image: {args.image_file} ({image.size[0]}x{image.size[1]}), {len(regions)} region(s):")
    if regions:
        print(describe_regions(regions))
    if args.query is not None:
        print(f"{chat.conv.roles[0]}: {args.query}")
        print(f"{chat.conv.roles[1]}: {chat.ask(args.query, require_all_regions=True)}")
        return 0
    while True:
        try:
            message = input(f"{chat.conv.roles[0]}: ")
        except EOFError:
            break
        if not message.strip():
            break
        try:
            print(f"{chat.conv.roles[1]}: {chat.ask(message)}")
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
