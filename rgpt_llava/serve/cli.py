"""Region-aware chat, LLaVA's ``llava.serve.cli`` with regions.

    python -m rgpt_llava.serve.cli --model-path P [--model-base B] --image-file F \
        --region box:x1,y1,x2,y2 --region mask:m.png ... [--query "Describe <region1>"]

With ``--query`` it prints one answer; otherwise it opens an interactive chat (empty line or EOF ends it).
Region specs (``--region``, below): the kinds of ``rgpt_llava.regions.kinds``, in original pixels; with
``--sam-model PATH`` also prompts that SAM turns into masks. ``<region>`` takes the regions in order; ``<regionN>``
names the N-th.
"""
import argparse
import sys

from rgpt_llava.mm_utils import check_region_references
from rgpt_llava.prompt import check_conv_mode, question_answer_prompt, roles
from rgpt_llava.regions.kinds import cli_help, needs_sam
from rgpt_llava.serve.engine import RegionEngine, Sampling
from rgpt_llava.serve.inputs import load_image_file, parse_regions
from rgpt_llava.serve.options import (StartupError, add_conv_mode_flag, add_model_flags, load_engine, load_sam,
                                      resolve_conv_mode_flag)


def describe_regions(regions):
    lines = []
    for r in regions:
        box = ", ".join(f"{v:g}" for v in r.box)
        made = (f" made by SAM from {r.source[len('SAM, '):]} (predicted IoU {r.score:.2f})" if r.score is not None
                else "")
        lines.append(f"  region {r.index + 1}: {r.kind}{made}, box [{box}]")
    return "\n".join(lines)


class RegionChat:
    """One image, its regions and a conversation; ``ask`` adds a turn and returns the answer (through the serving
    engine, :class:`rgpt_llava.serve.engine.RegionEngine`)."""

    def __init__(self, engine: RegionEngine, image, regions, conv_mode="vicuna_v1", temperature=0.2,
                 max_new_tokens=512, seed=None):
        try:
            self.conv_mode = check_conv_mode(conv_mode)
        except ValueError as e:
            raise ValueError(f"--conv-mode {e}") from None
        self.engine, self.image, self.regions = engine, image, list(regions)
        self.sampling = Sampling(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
        self.roles = roles(self.conv_mode)   # the template's (user, assistant) names, for the terminal
        self.turns = []   # (question, answer) of the turns answered so far

    def ask(self, message: str, require_all_regions: bool = False) -> str:
        prompt = question_answer_prompt(self.turns + [(message, None)], self.conv_mode, image=True)
        job = self.engine.prepare(self.image, [(prompt, self.regions)], self.sampling,
                                  require_all_regions=require_all_regions)
        answer = self.engine.answer(job)[0].strip()
        self.turns.append((message, answer))   # a refused question (InputError) leaves no turn behind
        return answer


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p, "a local SAM folder (facebook/sam-vit-base or -huge): turns point / scribble / snap prompts "
                       "into masks")
    p.add_argument("--image-file", required=True)
    p.add_argument("--region", action="append", default=[], metavar="SPEC", help=cli_help())
    p.add_argument("--query", default=None, help="one question; without it, an interactive chat")
    add_conv_mode_flag(p)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--seed", type=int, default=None, help="sampling seed (with --temperature > 0)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    resolve_conv_mode_flag(args)
    try:
        # EXIF orientation applied: a region drawn on a phone photo lands where the viewer showed it.
        image = load_image_file(args.image_file).convert("RGB")
        # Parse regions before loading the model: bad input fails in a second, not after minutes of loading. SAM is
        # loaded only for a prompt that needs it.
        sam = load_sam(args) if any(needs_sam(spec) for spec in args.region) else None
        regions = parse_regions([(spec, None) for spec in args.region], image.size, max(len(args.region), 1),
                                image=image, sam=sam, cli=True)
        if args.query is not None:
            check_region_references(args.query, len(regions), require_all=True)
        engine = load_engine(args, sam_model=None)
        chat = RegionChat(engine, image, regions, args.conv_mode, args.temperature, args.max_new_tokens, args.seed)
    except (ValueError, StartupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"image: {args.image_file} ({image.size[0]}x{image.size[1]}), {len(regions)} region(s):")
    if regions:
        print(describe_regions(regions))
    if args.query is not None:
        print(f"{chat.roles[0]}: {args.query}")
        print(f"{chat.roles[1]}: {chat.ask(args.query, require_all_regions=True)}")
        return 0
    while True:
        try:
            message = input(f"{chat.roles[0]}: ")
        except EOFError:
            break
        if not message.strip():
            break
        try:
            print(f"{chat.roles[1]}: {chat.ask(message)}")
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
