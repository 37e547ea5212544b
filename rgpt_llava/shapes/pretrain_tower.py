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

    python -m rgpt_llava.shapes.pretrain_tower --tower DIR --annotation-file instances_train.json \
        --image-folder ROOT --out DIR [--val-annotation-file instances_val.json] [--max-seconds 120]
    python -m rgpt_llava.shapes.pretrain_tower --tower DIR --shapes 60000 --out DIR --device cuda --amp \
        --probe-images 2000 --max-seconds 240

``--shapes N`` renders N RegionShapes images in memory (seed stream ``pretrain``, disjoint from the dataset's
``train`` / ``val`` streams) instead of reading COCO files. ``--probe-images N`` measures what the frozen features
hold *per region*: a small classifier on the layer's patch features averaged inside each shape's mask (and its box),
trained on N fresh images and scored on N/4 others. The probe reads region labels; the tower never does.
"""
import argparse
import functools
import json
import math
import os
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


@functools.lru_cache(maxsize=None)
def _shapes_defaults():
    """The RegionShapes generator's own defaults (shape count, visibility, stripes), so both make the same world."""
    from rgpt_llava.shapes import generator as shapes
    return shapes.build_parser().parse_args(["--out", "-", "--n-train", "1"])


def render_shapes_image(job) -> dict:
    """One RegionShapes image drawn in memory: uint8 ``[3, S, S]`` pixels, its objects' attributes and, per object,
    the fraction of each patch-grid cell covered by its visible mask and by its box (``[k, g, g]``)."""
    from rgpt_llava.shapes import generator as shapes
    from rgpt_llava.data.common import rng_for
    seed, split, index, side, grid = job
    d = _shapes_defaults()
    rng = rng_for(seed, shapes.SOURCE, split, index)
    specs, masks, _ = shapes.place_shapes(rng, rng.randint(d.min_shapes, d.max_shapes), (side, side),
                                          d.min_visible, d.striped_ratio)
    img = shapes.composite(specs, masks, (side, side))
    cell = side // grid
    objs, mask_w, box_w = [], [], []
    for spec, vis in zip(specs, shapes.visible_masks(masks)):
        ys, xs = np.nonzero(vis)
        box = np.zeros_like(vis)
        box[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
        mask_w.append(vis.reshape(grid, cell, grid, cell).mean((1, 3)))
        box_w.append(box.reshape(grid, cell, grid, cell).mean((1, 3)))
        objs.append({"shape": spec.shape, "colour": spec.colour, "size": spec.size, "texture": spec.texture,
                     "category_id": spec.category_id})
    return {"pixels": np.ascontiguousarray(img.transpose(2, 0, 1)), "objs": objs,
            "mask_w": np.stack(mask_w).astype(np.float32), "box_w": np.stack(box_w).astype(np.float32)}


def shapes_images(n: int, seed: int, split: str, side: int, grid: int, workers: int = None) -> List[dict]:
    """``n`` rendered RegionShapes images (``render_shapes_image``), in parallel processes."""
    import multiprocessing as mp
    if side % grid:
        raise ValueError(f"image side {side} is not a multiple of the patch grid {grid}")
    jobs = [(seed, split, i, side, grid) for i in range(n)]
    workers = workers or min(16, os.cpu_count() or 1)
    if workers <= 1 or n < 64:
        return [render_shapes_image(j) for j in tqdm(jobs, desc=f"render {split} images", leave=False)]
    with mp.get_context("spawn").Pool(workers) as pool:
        return list(tqdm(pool.imap(render_shapes_image, jobs, chunksize=64), total=n,
                         desc=f"render {split} images", leave=False))


def shapes_coco(rendered: List[dict]) -> dict:
    """The rendered images as a COCO-style dict (ids from 0), so their phrases come from ``image_phrases``."""
    from rgpt_llava.shapes import generator as shapes
    anns = [dict(o, id=k * 100 + j, image_id=k)
            for k, r in enumerate(rendered) for j, o in enumerate(r["objs"])]
    return {"images": [{"id": k} for k in range(len(rendered))], "categories": shapes.CATEGORIES, "annotations": anns}


def region_set(rendered: List[dict]) -> Dict[str, torch.Tensor]:
    """Regions of rendered images: image index, mask / box cell weights, category and shape labels."""
    from rgpt_llava.shapes import generator as shapes
    image, mask_w, box_w, cat, shape = [], [], [], [], []
    for k, r in enumerate(rendered):
        for o in r["objs"]:
            image.append(k)
            cat.append(o["category_id"] - 1)
            shape.append(shapes.SHAPES.index(o["shape"]))
        mask_w.append(torch.from_numpy(r["mask_w"]))
        box_w.append(torch.from_numpy(r["box_w"]))
    return {"image": torch.tensor(image), "mask": torch.cat(mask_w), "box": torch.cat(box_w),
            "category": torch.tensor(cat), "shape": torch.tensor(shape)}


def pooled_region_features(features: torch.Tensor, regions: Dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    """Mean of each region's patch features weighted by the cell coverage (``features``: ``[N, g*g, C]``)."""
    w = regions[kind].flatten(1).to(features)
    w = w / w.sum(1, keepdim=True).clamp_min(1e-8)
    return torch.einsum("rk,rkc->rc", w, features[regions["image"].to(features.device)])


def region_probe(patch_features, train: Tuple[torch.Tensor, dict], val: Tuple[torch.Tensor, dict],
                 epochs: int = 300, seed: int = 0) -> Dict[str, float]:
    """Held-out accuracy of a small MLP (one per region kind) on frozen, pooled region features: category (colour x
    shape, 20 classes) and, read off the predicted category, shape alone."""
    from rgpt_llava.shapes import generator as shapes
    torch.manual_seed(seed)
    feats = []
    for pixels, _ in (train, val):
        with torch.no_grad():
            feats.append(torch.cat([patch_features(pixels[i:i + 256]).float() for i in range(0, len(pixels), 256)]))
    out = {}
    n_shapes = len(shapes.SHAPES)
    for kind in ("mask", "box"):
        x_tr, x_va = (pooled_region_features(f, r, kind) for f, (_, r) in zip(feats, (train, val)))
        mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
        x_tr, x_va = (x_tr - mu) / sd, (x_va - mu) / sd
        y_tr = train[1]["category"].to(x_tr.device)
        clf = nn.Sequential(nn.Linear(x_tr.shape[1], 256), nn.GELU(), nn.Linear(256, len(shapes.CATEGORIES)))
        clf.to(x_tr.device)
        opt = torch.optim.Adam(clf.parameters(), lr=1e-2)
        for _ in range(epochs):
            loss = nn.functional.cross_entropy(clf(x_tr), y_tr)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            pred = clf(x_va).argmax(1).cpu()
        out[f"{kind}_category_acc"] = round(float((pred == val[1]["category"]).float().mean()) * 100, 1)
        out[f"{kind}_shape_acc"] = round(float((pred % n_shapes == val[1]["shape"]).float().mean()) * 100, 1)
    return out


def pretrain(tower_dir, annotation_file, image_folder, out_dir, val_annotation_file=None, key="shape",
             attributes=("size", "texture"), select_layer=-2, batch_size=32, lr=1e-3, max_seconds=120.0,
             max_epochs=1000, seed=0, threads=None, log=print, val_image_folder=None, shapes=0, probe_images=0,
             probe_every=None, device="cpu", amp=False, workers=None) -> dict:
    """Pretrain ``tower_dir`` on COCO images (``annotation_file``) or on ``shapes`` in-memory RegionShapes images,
    for ``max_seconds`` (cosine learning-rate decay over that budget) or ``max_epochs``; save it to ``out_dir``."""
    from transformers import CLIPImageProcessor, CLIPVisionModel

    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    processor = CLIPImageProcessor.from_pretrained(tower_dir)
    tower = CLIPVisionModel.from_pretrained(tower_dir).to(device)
    side, patch = tower.config.image_size, tower.config.patch_size
    grid = side // patch
    mean = torch.tensor(processor.image_mean, device=device)[:, None, None]
    std = torch.tensor(processor.image_std, device=device)[:, None, None]

    def rendered_set(n, split):  # uint8 pixels; CLIP's resize / crop are the identity at the tower's own side
        rendered = shapes_images(n, seed, split, side, grid, workers)
        return torch.from_numpy(np.stack([r["pixels"] for r in rendered])), rendered

    val = None
    if shapes:
        x, rendered = rendered_set(shapes, "pretrain")
        vocab, present = image_phrases(shapes_coco(rendered), key, attributes)
        ids = list(range(shapes))
        source = f"{shapes} RegionShapes images rendered in memory (seed {seed}, stream 'pretrain')"
    else:
        coco = json.loads(Path(annotation_file).read_text())
        vocab, present = image_phrases(coco, key, attributes)
        ids = sorted(present)
        x = load_images(coco, Path(image_folder), processor, ids)
        source = str(annotation_file)
        if val_annotation_file:
            vcoco = json.loads(Path(val_annotation_file).read_text())
            _, vpresent = image_phrases(vcoco, key, attributes)
            vids = sorted(vpresent)
            val = (load_images(vcoco, Path(val_image_folder or image_folder), processor, vids),
                   targets_for(vids, vpresent, vocab))
    y = targets_for(ids, present, vocab)
    x, y = x.to(device), y.to(device)
    probe = None
    if probe_images:
        probe = []
        for split, n in (("probe_train", probe_images), ("probe_val", max(1, probe_images // 4))):
            px, rendered = rendered_set(n, split)
            probe.append((px.to(device), region_set(rendered)))

    head = PatchMILHead(tower.config.hidden_size, len(vocab)).to(device)
    with torch.no_grad():  # start at each phrase's prior, so early steps learn "where", not base rates
        prior = y.mean(0).clamp(1e-3, 1 - 1e-3)
        head.score.bias.copy_(torch.log(prior / (1 - prior)))
    # Layers after the one LLaVA reads get no gradient from the head, so AdamW leaves them as they are.
    opt = torch.optim.AdamW(list(tower.parameters()) + list(head.parameters()), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)

    def patch_features(pixels):
        if pixels.dtype == torch.uint8:
            pixels = (pixels.float() / 255.0 - mean) / std
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            hidden = tower(pixels, output_hidden_states=True).hidden_states[select_layer]
        return hidden[:, 1:].float()  # LLaVA's "patch" features: no CLS

    def evaluate(entry):
        tower.eval()
        with torch.no_grad():
            if val is not None:
                scores = torch.cat([head(patch_features(val[0][i:i + 64].to(device)).float()).cpu()
                                    for i in range(0, len(val[0]), 64)])
                entry["val_mAP"] = mean_average_precision(scores, val[1])
        if probe is not None:
            entry["region_probe"] = region_probe(patch_features, probe[0], probe[1], seed=seed)
        tower.train()
        return entry

    history = []
    if probe is not None:
        history.append(evaluate({"epoch": None, "steps": 0, "seconds": 0.0}))
        log(f"tower pretraining: {json.dumps(history[-1])}")
    start = time.monotonic()
    step, done, next_probe = 0, False, probe_every
    bar = tqdm(desc="tower pretraining", unit="step", total=None)
    for epoch in range(max_epochs):
        order = torch.randperm(len(x), generator=gen)
        epoch_loss = []
        for b in range(0, len(order) - batch_size + 1, batch_size):
            elapsed = time.monotonic() - start
            for group in opt.param_groups:  # linear warm-up over 3 % of the time budget, then cosine decay
                group["lr"] = lr * min(1.0, elapsed / (0.03 * max_seconds)) * 0.5 * (
                    1 + math.cos(math.pi * min(1.0, elapsed / max_seconds)))
            idx = order[b:b + batch_size].to(device)
            pixels = x[idx]
            # left-right and up-down flips keep every phrase true
            for dim in (-1, -2):
                flip = (torch.rand(len(idx), generator=gen) < 0.5).to(device)
                pixels = torch.where(flip[:, None, None, None], pixels.flip(dim), pixels)
            loss = nn.functional.binary_cross_entropy_with_logits(head(patch_features(pixels)).float(), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            epoch_loss.append(loss.detach())
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
            if next_probe is not None and elapsed >= next_probe:
                history.append(evaluate({"epoch": epoch, "steps": step, "seconds": round(elapsed, 1),
                                         "loss": float(torch.stack(epoch_loss).mean())}))
                log(f"tower pretraining: {json.dumps(history[-1])}")
                next_probe += probe_every
            if elapsed > max_seconds:
                done = True
                break
        if done or epoch == max_epochs - 1 or val is not None:
            entry = {"epoch": epoch, "steps": step, "seconds": round(time.monotonic() - start, 1),
                     "loss": float(torch.stack(epoch_loss).mean()) if epoch_loss else None}
            if not (history and history[-1]["steps"] == step and val is None):  # not just probed
                history.append(evaluate(entry))
                log(f"tower pretraining: {json.dumps(history[-1])}")
        if done:
            break
    bar.close()
    out_dir = Path(out_dir)
    tower.to("cpu").save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    summary = {"phrases": vocab, "select_layer": select_layer, "seconds": round(time.monotonic() - start, 1),
               "steps": step, "batch_size": batch_size, "lr": lr, "device": str(device), "amp": amp,
               "source": source, "history": history, "source_tower": str(tower_dir)}
    if device.type == "cuda":
        summary["device_name"] = torch.cuda.get_device_name(device)
    (out_dir / "tower_pretraining.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tower", required=True, help="CLIPVisionModel folder (with its image processor)")
    parser.add_argument("--annotation-file", default=None, help="COCO instances of the training images")
    parser.add_argument("--image-folder", default=None, help="root that the file_name fields are relative to")
    parser.add_argument("--shapes", type=int, default=0,
                        help="instead of COCO files: render this many RegionShapes images in memory")
    parser.add_argument("--out", required=True, help="where to save the pretrained tower")
    parser.add_argument("--val-annotation-file", default=None, help="COCO instances to report image-level mAP on")
    parser.add_argument("--val-image-folder", default=None, help="root of the val images (default: --image-folder)")
    parser.add_argument("--key", default="shape", help="annotation field that attributes are bound to")
    parser.add_argument("--attribute", action="append", default=None,
                        help="annotation field to add as '<value> <key>' phrases (repeatable; default: size, texture)")
    parser.add_argument("--select-layer", type=int, default=-2, help="tower layer to train (LLaVA's select layer)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine decay over the budget)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="wall-clock budget")
    parser.add_argument("--max-epochs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast for the tower")
    parser.add_argument("--workers", type=int, default=None, help="processes that render --shapes images")
    parser.add_argument("--probe-images", type=int, default=0,
                        help="region probe of the frozen features on this many fresh RegionShapes images (+ 1/4 val)")
    parser.add_argument("--probe-every", type=float, default=None, help="also probe every this many seconds")
    args = parser.parse_args(argv)
    if args.shapes < 0 or args.probe_images < 0:
        parser.error("--shapes and --probe-images must be >= 0")
    if bool(args.shapes) == bool(args.annotation_file):
        parser.error("give either --annotation-file (with --image-folder) or --shapes N")
    if args.annotation_file and not args.image_folder:
        parser.error("--annotation-file needs --image-folder")
    if not Path(args.tower).is_dir():
        parser.error(f"--tower {args.tower}: no such folder")
    if args.image_folder and not Path(args.image_folder).is_dir():
        parser.error(f"--image-folder {args.image_folder}: no such folder")
    for name in ("annotation_file", "val_annotation_file"):
        if getattr(args, name) and not Path(getattr(args, name)).is_file():
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: no such file")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device here")
    attributes = ("size", "texture") if args.attribute is None else tuple(args.attribute)
    try:
        summary = pretrain(args.tower, args.annotation_file, args.image_folder, args.out, args.val_annotation_file,
                           key=args.key, attributes=attributes, select_layer=args.select_layer,
                           batch_size=args.batch_size, lr=args.lr, max_seconds=args.max_seconds,
                           max_epochs=args.max_epochs, seed=args.seed, threads=args.threads,
                           val_image_folder=args.val_image_folder, shapes=args.shapes,
                           probe_images=args.probe_images, probe_every=args.probe_every, device=args.device,
                           amp=args.amp, workers=args.workers)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"pretrained tower saved to {args.out} ({summary['steps']} steps, {summary['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
