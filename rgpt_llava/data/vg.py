"""Visual Genome region descriptions (+ relationships) -> brief-caption and relationship conversations.

Inputs (VG v1.2 / v1.4 files as distributed):

* ``region_descriptions.json``: ``[{"id": image_id, "regions": [{"region_id", "image_id", "phrase", "x", "y",
  "width", "height"}, ...]}, ...]``;
* ``relationships.json`` (optional): ``[{"image_id", "relationships": [{"predicate", "subject": {"object_id", "x",
  "y", "w", "h", "name" | "names"}, "object": {...}}, ...]}, ...]``;
* ``image_data.json`` (optional): ``[{"image_id" (or "id"), "url", "width", "height"}, ...]``: gives the image path
  (the URL's last two parts, ``VG_100K/1.jpg`` / ``VG_100K_2/2.jpg``) and the size (boxes are then checked and clipped
  to the image). Without it the path is ``<image_id>.jpg`` (a flat folder) and boxes are not checked.

Per image at most ``max_regions`` regions (10, the paper's "randomly sampled up to 10 boxes per image"): first up to
``max_relations`` relationships (subject and object are two regions, an object shared by two relationships is one
region), then brief-caption regions fill the remaining slots, all seeded. One conversation per image, turns in a
seeded random order, regions numbered in order of first mention. Caption turns: a Table 21 prompt, answered with the
phrase. Relationship turns: a Table 23 prompt (first ``<region>`` the subject, second the object), answered with
``"subject predicate object"`` (predicate lower-cased: VG spells ``ON`` / ``on`` / ``On``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from rgpt_llava.data.common import (Conversation, DataError, Stats, box_region, clean_text, image_path,
                                    iter_progress, load_json, require, rng_for)
from rgpt_llava.data.instructions import fill, load_pools


def _image_data(path: str) -> Dict[Any, Tuple[str, Optional[Tuple[int, int]]]]:
    data = load_json(path, "Visual Genome image_data.json")
    require(isinstance(data, list), path, "expected a list of images (Visual Genome image_data.json)")
    out = {}
    for i, img in enumerate(data):
        require(isinstance(img, dict), path, f"entry #{i} must be an object")
        iid = img.get("image_id", img.get("id"))
        require(iid is not None, path, f"entry #{i} has no 'image_id'")
        url = img.get("url")
        rel = "/".join(url.rstrip("/").split("/")[-2:]) if isinstance(url, str) and "/" in url \
            else f"VG_100K/{iid}.jpg"
        w, h = img.get("width"), img.get("height")
        size = (int(w), int(h)) if isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0 \
            else None
        out[iid] = (rel, size)
    return out


def _name(obj: dict) -> str:
    name = obj.get("name")
    if not isinstance(name, str):
        names = obj.get("names")
        name = names[0] if isinstance(names, list) and names and isinstance(names[0], str) else ""
    return clean_text(name)


def convert(regions_path: str, relationships_path: Optional[str] = None, image_data_path: Optional[str] = None,
            image_prefix: str = "", seed: int = 0, max_regions: int = 10, max_relations: int = 2,
            stats: Optional[Stats] = None) -> List[dict]:
    if max_regions < 1 or max_relations < 0:
        raise ValueError("--max-regions must be >= 1 and --max-relations >= 0")
    stats = stats or Stats("vg")
    pools = load_pools()
    images = _image_data(image_data_path) if image_data_path else None

    data = load_json(regions_path, "Visual Genome region_descriptions.json")
    require(isinstance(data, list), regions_path, "expected a list of {'id', 'regions'} (region_descriptions.json)")
    captions: Dict[Any, list] = {}
    for i, entry in enumerate(data):
        require(isinstance(entry, dict) and isinstance(entry.get("regions"), list), regions_path,
                f"entry #{i} must be an object with a 'regions' list")
        iid = entry.get("id", entry.get("image_id"))
        require(iid is not None, regions_path, f"entry #{i} has no image 'id'")
        require(iid not in captions, regions_path, f"image {iid} appears twice")
        captions[iid] = entry["regions"]

    relations: Dict[Any, list] = {}
    if relationships_path:
        rdata = load_json(relationships_path, "Visual Genome relationships.json")
        require(isinstance(rdata, list), relationships_path,
                "expected a list of {'image_id', 'relationships'} (relationships.json)")
        for i, entry in enumerate(rdata):
            require(isinstance(entry, dict) and isinstance(entry.get("relationships"), list), relationships_path,
                    f"entry #{i} must be an object with a 'relationships' list")
            iid = entry.get("image_id", entry.get("id"))
            require(iid is not None, relationships_path, f"entry #{i} has no 'image_id'")
            relations.setdefault(iid, []).extend(entry["relationships"])

    image_ids = list(captions) + [iid for iid in relations if iid not in captions]
    if images is not None:
        for iid in image_ids:
            if iid not in images:
                raise DataError(f"{image_data_path}: image {iid} (from the region / relationship files) is not in "
                                f"image_data.json")
    stats.info["images"] = len(image_ids)
    stats.info["region descriptions"] = sum(len(v) for v in captions.values())
    stats.info["relationships"] = sum(len(v) for v in relations.values())

    samples = []
    for iid in iter_progress(image_ids, "vg: images"):
        rel_path, size = images[iid] if images is not None else (f"{iid}.jpg", None)
        caps = _caption_regions(iid, captions.get(iid, []), size, stats, regions_path)
        rels = _relations(iid, relations.get(iid, []), size, stats)
        rng = rng_for(seed, "vg", "image", iid)

        rng.shuffle(rels)
        chosen_rels, slots = [], set()
        for rel in rels:
            if len(chosen_rels) >= max_relations:
                break
            new = {rel[0][0], rel[2][0]} - slots
            if len(slots) + len(new) <= max_regions:
                chosen_rels.append(rel)
                slots |= new
        n_caps = min(max_regions - len(slots), len(caps))
        chosen_caps = rng.sample(caps, n_caps)
        if len(rels) > len(chosen_rels):
            stats.note(f"relationships not selected (max {max_relations} per image)", len(rels) - len(chosen_rels))
        if len(caps) > n_caps:
            stats.note(f"region descriptions not selected (max {max_regions} regions per image)", len(caps) - n_caps)
        turns = [("caption", c) for c in chosen_caps] + [("relation", r) for r in chosen_rels]
        if not turns:
            stats.note("images dropped: no usable region")
            continue
        rng.shuffle(turns)
        conv = Conversation()
        for kind, t in turns:
            if kind == "caption":
                key, region, phrase = t
                conv.ask(fill(pools.sample("brief_caption", rng), [conv.region(key, region)]), phrase)
            else:
                (skey, sreg, sname), predicate, (okey, oreg, oname) = t
                placeholders = [conv.region(skey, sreg), conv.region(okey, oreg)]
                conv.ask(fill(pools.sample("relationship", rng), placeholders), f"{sname} {predicate} {oname}")
        samples.append(conv.sample(f"vg_{iid}", image_path(image_prefix, rel_path), size))
    return samples


def _caption_regions(iid: Any, regions: list, size, stats: Stats, path: str) -> list:
    out, seen = [], set()
    for r in regions:
        if not isinstance(r, dict):
            stats.skip("malformed region description", f"image {iid}", f"region entry is not an object: {r!r:.60}")
            continue
        item = f"region {r.get('region_id')} (image {iid})"
        if r.get("image_id", iid) != iid:
            raise DataError(f"{path}: {item} says image_id {r.get('image_id')!r} but is listed under image {iid}")
        phrase = clean_text(r.get("phrase"))
        if not phrase:
            stats.skip("region description without a phrase", item)
            continue
        box = box_region([r.get("x"), r.get("y"), r.get("width"), r.get("height")], size, stats, item)
        if box is None:
            continue
        key = (phrase.lower(), tuple(box))
        if key in seen:
            stats.note("duplicate region descriptions (same phrase and box) merged")
            continue
        seen.add(key)
        out.append((("region", r.get("region_id", len(out))), {"bbox": box, "region_id": r.get("region_id")}, phrase))
    return out


def _relations(iid: Any, rels: list, size, stats: Stats) -> list:
    out = []
    for rel in rels:
        if not isinstance(rel, dict) or not isinstance(rel.get("subject"), dict) or not isinstance(
                rel.get("object"), dict):
            stats.skip("malformed relationship", f"image {iid}", f"relationship without subject/object: {rel!r:.60}")
            continue
        item = f"relationship {rel.get('relationship_id')} (image {iid})"
        predicate = clean_text(rel.get("predicate")).lower()
        parts = []
        for role in ("subject", "object"):
            obj = rel[role]
            name = _name(obj)
            if not name:
                stats.skip("relationship object without a name", item, f"{role} has no name")
                break
            box = box_region([obj.get("x"), obj.get("y"), obj.get("w"), obj.get("h")], size, stats,
                             f"{item} {role}")
            if box is None:
                break
            oid = obj.get("object_id")
            parts.append((("object", oid if oid is not None else f"{item} {role}"),
                          {"bbox": box, "object_id": oid, "name": name}, name))
        else:
            if not predicate:
                stats.skip("relationship without a predicate", item)
            elif parts[0][0] == parts[1][0]:
                stats.skip("relationship of an object with itself", item)
            else:
                out.append((parts[0], predicate, parts[1]))
    return out
