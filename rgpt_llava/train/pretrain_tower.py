"""Image-level pretraining of a small CLIP-style vision tower, before RegionGPT freezes it.

RegionGPT freezes a *pretrained* CLIP ViT. A tower built from scratch (tests, RegionShapes) has no such pretraining;
this gives it an analogue: weak, image-level supervision only -- which phrases occur somewhere in the image, as in a
caption -- never where. Labels are bag-of-phrases read from COCO instances: the category of every annotation, plus
any extra per-annotation attributes named by ``--attribute`` bound to a key attribute (``size shape`` gives
"small circle", ...).

The head scores every patch of the layer LLaVA reads (``--select-layer``, as ``mm_vision_select_layer``) and pools
the scores over the image with log-sum-exp (multiple-instance learning): the image says "there is a red circle", the
tower must find where. The head is thrown away; the tower is saved with its image processor, ready for
``--vision_tower``.

    python -m rgpt_llava.train.pretrain_tower --tower DIR --annotation-file instances_train.json \
        --image-folder ROOT --out DIR [--val-annotation-file instances_val.json] [--max-seconds 120]
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from tqdm import tqdm


def image_phrases(coco: dict, key: str = None, attributes: Sequence[str] = ()) -> Tuple[List[str], Dict[int, set]]:
    """Sorted phrase vocabulary and, per image id, the set of phrases present (categories + bound attributes)."""
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    present: Dict[int, set] = {img["id"]: set() for img in coco["images"]}
    for ann in coco["annotations"]:
        if ann["image_id"] not in present:
            raise ValueError(f"annotation {ann.get('id')}: image_id {ann['image_id']} is not in the images list")
        if ann["category_id"] not in cats:
            raise ValueError(f"annotation {ann.get('id')}: unknown category_id {ann['category_id']}")
        phrases = present[ann["image_id"]]
        phrases.add(cats[ann["category_id"]])
        if key is not None and key in ann:
            phrases.add(str(ann[key]))
        for attr in attributes:
            if attr not in ann or key not in ann:
                raise ValueError(f"annotation {ann.get('id')}: --attribute {attr} needs fields {attr!r} and "
                                 f"{key!r} in every annotation")
            phrases.add(f"{ann[attr]} {ann[key]}")
    vocab = sorted(set().union(*present.values()) | set(cats.values()))
    return vocab, present


class PatchMILHead(nn.Module):
    """Per-patch phrase scores, pooled over the image by a smooth maximum."""

    def __init__(self, width: int, num_phrases: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.score = nn.Linear(width, num_phrases)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:  # [B, N, C] -> [B, K]
        scores = self.score(self.norm(patches))
        return torch.logsumexp(scores, dim=1) - math.log(scores.shape[1])


def load_images(coco: dict, image_folder: Path, processor, ids: List[int]) -> torch.Tensor:
    """Pixel tensors in LLaVA's ``pad`` geometry (square images pass unchanged)."""
    from llava.mm_utils import expand2square

    by_id = {img["id"]: img for img in coco["images"]}
    fill = tuple(int(x * 255) for x in processor.image_mean)
    pixels = []
    for i in tqdm(ids, desc="load images", leave=False):
        path = image_folder / by_id[i]["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"image {i}: {path} does not exist (check --image-folder)")
        img = expand2square(Image.open(path).convert("RGB"), fill)
        pixels.append(processor(img, return_tensors="pt")["pixel_values"][0])
    return torch.stack(pixels)


def targets_for(ids, present, vocab) -> torch.Tensor:
    """Multi-hot [images, phrases]; phrases outside ``vocab`` (seen only in a val split) are not scored."""
    index = {p: k for k, p in enumerate(vocab)}
    y = torch.zeros(len(ids), len(vocab))
    for row, i in enumerate(ids):
        for p in present[i]:
            if p in index:
                y[row, index[p]] = 1.0
    return y


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over phrases (with at least one positive) of the average precision of ranking images by score."""
    aps = []
    for k in range(targets.shape[1]):
        y = targets[:, k][torch.argsort(scores[:, k], descending=True)]
        if y.sum() == 0:
            continue
        hits = torch.cumsum(y, 0)
        precision = hits / torch.arange(1, len(y) + 1)
        aps.append(float((precision * y).sum() / y.sum()))
    return float(np.mean(aps))


def pretrain(tower_dir, annotation_file, image_folder, out_dir, val_annotation_file=None, key="shape",
             attributes=("size", "texture"), select_layer=-2, batch_size=32, lr=1e-3, max_seconds=120.0,
             max_epochs=1000, seed=0, threads=None, log=print, val_image_folder=None) -> dict:
    from transformers import CLIPImageProcessor, CLIPVisionModel

    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    processor = CLIPImageProcessor.from_pretrained(tower_dir)
    tower = CLIPVisionModel.from_pretrained(tower_dir)
    coco = json.loads(Path(annotation_file).read_text())
    vocab, present = image_phrases(coco, key, attributes)
    ids = sorted(present)
    x = load_images(coco, Path(image_folder), processor, ids)
    y = targets_for(ids, present, vocab)
    val = None
    if val_annotation_file:
        vcoco = json.loads(Path(val_annotation_file).read_text())
        _, vpresent = image_phrases(vcoco, key, attributes)
        vids = sorted(vpresent)
        val = (load_images(vcoco, Path(val_image_folder or image_folder), processor, vids), targets_for(vids, vpresent, vocab))

    head = PatchMILHead(tower.config.hidden_size, len(vocab))
    with torch.no_grad():  # start at each phrase's prior, so early steps learn "where", not base rates
        prior = y.mean(0).clamp(1e-3, 1 - 1e-3)
        head.score.bias.copy_(torch.log(prior / (1 - prior)))
    # Layers after the one LLaVA reads get no gradient from the head, so AdamW leaves them as they are.
    opt = torch.optim.AdamW(list(tower.parameters()) + list(head.parameters()), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)

    def patch_features(pixels):
        hidden = tower(pixels, output_hidden_states=True).hidden_states[select_layer]
        return hidden[:, 1:]  # LLaVA's "patch" features: no CLS

    def evaluate():
        tower.eval()
        with torch.no_grad():
            scores = torch.cat([head(patch_features(val[0][i:i + 64])) for i in range(0, len(val[0]), 64)])
        tower.train()
        return mean_average_precision(scores, val[1])

    start = time.monotonic()
    history, step, done = [], 0, False
    bar = tqdm(desc="tower pretraining", unit="step", total=None)
    for epoch in range(max_epochs):
        order = torch.randperm(len(x), generator=gen)
        epoch_loss = []
        for b in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[b:b + batch_size]
            pixels = x[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5  # left-right flip keeps every phrase true
            pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
            loss = nn.functional.binary_cross_entropy_with_logits(head(patch_features(pixels)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            epoch_loss.append(loss.item())
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
            if time.monotonic() - start > max_seconds:
                done = True
                break
        entry = {"epoch": epoch, "steps": step, "loss": float(np.mean(epoch_loss)) if epoch_loss else None}
        if val is not None:
            entry["val_mAP"] = evaluate()
        history.append(entry)
        log(f"tower pretraining: {json.dumps(entry)}")
        if done:
            break
    bar.close()
    out_dir = Path(out_dir)
    tower.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    summary = {"phrases": vocab, "select_layer": select_layer, "seconds": round(time.monotonic() - start, 1),
               "steps": step, "history": history, "source_tower": str(tower_dir)}
    (out_dir / "tower_pretraining.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tower", required=True, help="CLIPVisionModel folder (with its image processor)")
    parser.add_argument("--annotation-file", required=True, help="COCO instances of the training images")
    parser.add_argument("--image-folder", required=True, help="root that the file_name fields are relative to")
    parser.add_argument("--out", required=True, help="where to save the pretrained tower")
    parser.add_argument("--val-annotation-file", default=None, help="COCO instances to report image-level mAP on")
    parser.add_argument("--val-image-folder", default=None, help="root of the val images (default: --image-folder)")
    parser.add_argument("--key", default="shape", help="annotation field that attributes are bound to")
    parser.add_argument("--attribute", action="append", default=None,
                        help="annotation field to add as '<value> <key>' phrases (repeatable; default: size, texture)")
    parser.add_argument("--select-layer", type=int, default=-2, help="tower layer to train (LLaVA's select layer)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="wall-clock budget")
    parser.add_argument("--max-epochs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    for name in ("tower", "image_folder"):
        if not Path(getattr(args, name)).is_dir():
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: no such folder")
    for name in ("annotation_file", "val_annotation_file"):
        if getattr(args, name) and not Path(getattr(args, name)).is_file():
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: no such file")
    attributes = ("size", "texture") if args.attribute is None else tuple(args.attribute)
    try:
        summary = pretrain(args.tower, args.annotation_file, args.image_folder, args.out, args.val_annotation_file,
                           key=args.key, attributes=attributes, select_layer=args.select_layer,
                           batch_size=args.batch_size, lr=args.lr, max_seconds=args.max_seconds,
                           max_epochs=args.max_epochs, seed=args.seed, threads=args.threads,
                           val_image_folder=args.val_image_folder)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"pretrained tower saved to {args.out} ({summary['steps']} steps, {summary['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
