"""Merge an RGPT LoRA checkpoint into a full one (LLaVA's scripts/merge_lora_weights.py, via RGPT's builder).

    python scripts/rgpt/merge_lora_weights.py --model-path LORA_DIR --model-base BASE_LLM --save-model-path OUT
"""
import argparse
import sys

from rgpt_llava.convert import check_output, clear_checkpoint_files
from rgpt_llava.model.builder import CheckpointError, describe_checkpoint, load_pretrained_model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True)
    p.add_argument("--model-base", required=True)
    p.add_argument("--save-model-path", required=True)
    p.add_argument("--overwrite", action="store_true",
                   help="replace the checkpoint an existing --save-model-path holds (its other files are kept)")
    args = p.parse_args(argv)
    try:
        check_output(args.save_model_path, [("--model-path", args.model_path), ("--model-base", args.model_base)],
                     args.overwrite, flag="--save-model-path")
        if describe_checkpoint(args.model_path) != "lora":
            raise CheckpointError(f"{args.model_path} is not a LoRA checkpoint (no adapter_config.json)")
        tokenizer, model, _, _ = load_pretrained_model(args.model_path, args.model_base, device="cpu")
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    clear_checkpoint_files(args.save_model_path)  # check_output allowed it: nothing there, or --overwrite
    model.save_pretrained(args.save_model_path, safe_serialization=True)
    tokenizer.save_pretrained(args.save_model_path)
    print(f"merged checkpoint written to {args.save_model_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
