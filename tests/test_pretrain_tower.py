"""Image-level pretraining of a small vision tower (the CLIP-pretraining analogue of the RegionShapes benchmark)."""
import json

import pytest
import torch

from rgpt_llava.shapes import pretrain_tower
from rgpt_llava.shapes.pretrain_tower import PatchMILHead, image_phrases, mean_average_precision, targets_for


def coco():
    return {"images": [{"id": 1}, {"id": 2}],
            "categories": [{"id": 1, "name": "red circle"}, {"id": 2, "name": "blue star"}],
            "annotations": [
                {"id": 10, "image_id": 1, "category_id": 1, "shape": "circle", "size": "small"},
                {"id": 11, "image_id": 1, "category_id": 1, "shape": "circle", "size": "large"},
                {"id": 12, "image_id": 2, "category_id": 2, "shape": "star", "size": "small"}]}


def test_phrases_are_image_level_bags():
    vocab, present = image_phrases(coco(), "shape", ("size",))
    assert vocab == sorted(["red circle", "blue star", "circle", "star", "small circle", "large circle", "small star"])
    assert present == {1: {"red circle", "circle", "small circle", "large circle"},
                       2: {"blue star", "star", "small star"}}
    y = targets_for([2, 1], present, vocab)
    assert y.tolist()[0] == [1.0 if p in present[2] else 0.0 for p in vocab]
    # categories only
    vocab, _ = image_phrases(coco(), None, ())
    assert vocab == ["blue star", "red circle"]


def test_bad_annotations_are_named():
    bad = coco()
    bad["annotations"][1]["image_id"] = 7
    with pytest.raises(ValueError, match="annotation 11: image_id 7"):
        image_phrases(bad)
    bad = coco()
    bad["annotations"][2]["category_id"] = 9
    with pytest.raises(ValueError, match="annotation 12: unknown category_id 9"):
        image_phrases(bad)
    bad = coco()
    del bad["annotations"][0]["size"]
    with pytest.raises(ValueError, match="annotation 10: --attribute size"):
        image_phrases(bad, "shape", ("size",))


def test_mean_average_precision_by_hand():
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.1, 0.2]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # phrase 0: ranking pos, neg, pos -> AP (1 + 2/3) / 2; phrase 1: its one positive ranked first -> 1
    assert mean_average_precision(scores, targets) == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)


def test_mil_head_is_a_smooth_max_over_patches():
    head = PatchMILHead(4, 2)
    patches = torch.randn(3, 5, 4)
    scores = head.score(head.norm(patches))
    out = head(patches)
    assert out.shape == (3, 2)
    assert torch.all(out <= scores.max(1).values + 1e-6) and torch.all(out >= scores.mean(1) - 1e-6)


def test_pretraining_updates_and_saves_the_tower(tmp_path, tiny_clip_dir):
    from transformers import CLIPVisionModel
    from rgpt_llava.shapes import generator as shapes
    data = tmp_path / "data"
    assert shapes.main(["--out", str(data), "--n-train", "6", "--n-val", "2", "--image-size", "64"]) == 0
    out = tmp_path / "tower"
    summary = pretrain_tower.pretrain(tiny_clip_dir, data / "annotations" / "instances_train.json", data, out,
                                      val_annotation_file=data / "annotations" / "instances_val.json",
                                      batch_size=4, max_seconds=60, max_epochs=2, log=lambda m: None)
    assert summary["steps"] == 2 and len(summary["history"]) == 2 and 0 <= summary["history"][-1]["val_mAP"] <= 1
    assert "red circle" in summary["phrases"] and "circle" in summary["phrases"] and "small circle" in summary["phrases"]
    before, after = CLIPVisionModel.from_pretrained(tiny_clip_dir), CLIPVisionModel.from_pretrained(out)
    emb = next(k for k in before.state_dict() if k.endswith("embeddings.patch_embedding.weight"))  # 5.x: no vision_model.
    assert not torch.equal(before.state_dict()[emb], after.state_dict()[emb])
    assert (out / "preprocessor_config.json").is_file()
    assert json.loads((out / "tower_pretraining.json").read_text())["steps"] == 2


def test_cli_bad_input(tmp_path, tiny_clip_dir, capsys):
    with pytest.raises(SystemExit):
        pretrain_tower.main(["--tower", str(tmp_path / "none"), "--annotation-file", "x.json",
                             "--image-folder", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "--tower" in capsys.readouterr().err
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps(coco() | {"images": [{"id": 1, "file_name": "missing.png"}, {"id": 2, "file_name": "m2.png"}]}))
    assert pretrain_tower.main(["--tower", tiny_clip_dir, "--annotation-file", str(ann), "--image-folder", str(tmp_path),
                                "--out", str(tmp_path / "o"), "--attribute", "size"]) == 2
    assert "missing.png does not exist" in capsys.readouterr().err


def test_rendered_shapes_image_weights_are_coverage():
    r = pretrain_tower.render_shapes_image((0, "pretrain", 3, 56, 4))
    assert r["pixels"].shape == (3, 56, 56) and r["pixels"].dtype.name == "uint8"
    k = len(r["objs"])
    assert 2 <= k <= 6 and r["mask_w"].shape == r["box_w"].shape == (k, 4, 4)
    # each cell holds the covered fraction of its 14x14 pixels; the box covers the mask
    assert ((r["mask_w"] >= 0) & (r["mask_w"] <= 1)).all() and (r["box_w"] >= r["mask_w"] - 1e-6).all()
    assert all(w.sum() > 0 for w in r["mask_w"])
    again = pretrain_tower.render_shapes_image((0, "pretrain", 3, 56, 4))
    assert (again["pixels"] == r["pixels"]).all()                       # seeded per (seed, stream, index)
    other = pretrain_tower.render_shapes_image((0, "probe_val", 3, 56, 4))
    assert not (other["pixels"] == r["pixels"]).all()
    with pytest.raises(ValueError, match="not a multiple of the patch grid"):
        pretrain_tower.shapes_images(1, 0, "x", 50, 4)


def test_pooled_region_features_by_hand():
    feats = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)   # 2 images, 2x2 grid, 1 channel
    regions = {"image": torch.tensor([1, 0]), "mask": torch.tensor([[[1.0, 0.0], [0.0, 0.5]],
                                                                     [[0.0, 0.0], [0.0, 1.0]]])}
    pooled = pretrain_tower.pooled_region_features(feats, regions, "mask")
    # image 1 cells hold 4, 5, 6, 7: (1 * 4 + 0.5 * 7) / 1.5 = 5; image 0's last cell holds 3
    assert pooled[:, 0].tolist() == pytest.approx([5.0, 3.0])


def test_region_probe_reads_what_the_features_hold():
    from rgpt_llava.shapes import generator as shapes
    gen = torch.Generator().manual_seed(0)

    def split(n):   # one region per image, covering the whole 1x1 grid; the feature is the one-hot category
        cat = torch.randint(0, len(shapes.CATEGORIES), (n,), generator=gen)
        feats = torch.nn.functional.one_hot(cat, len(shapes.CATEGORIES)).float()[:, None, :]
        regions = {"image": torch.arange(n), "mask": torch.ones(n, 1, 1), "box": torch.ones(n, 1, 1),
                   "category": cat, "shape": cat % len(shapes.SHAPES)}
        return feats, regions

    res = pretrain_tower.region_probe(lambda x: x, split(200), split(50), epochs=100)
    assert res["mask_category_acc"] == 100.0 and res["box_shape_acc"] == 100.0
    noise = split(50)
    res = pretrain_tower.region_probe(lambda x: x, split(200), (torch.zeros_like(noise[0]), noise[1]), epochs=100)
    assert res["mask_category_acc"] < 30    # constant features: one guess for every region


def test_pretraining_on_rendered_shapes_probes_regions(tmp_path, tiny_clip_dir):
    out = tmp_path / "tower"
    summary = pretrain_tower.pretrain(tiny_clip_dir, None, None, out, shapes=8, probe_images=8, batch_size=4,
                                      max_seconds=60, max_epochs=1, workers=1, log=lambda m: None)
    assert summary["steps"] == 2 and "8 RegionShapes images" in summary["source"]
    assert summary["history"][0]["steps"] == 0 and summary["history"][-1]["steps"] == 2
    assert set(summary["history"][-1]["region_probe"]) == {"mask_category_acc", "mask_shape_acc", "box_category_acc",
                                                           "box_shape_acc"}
    assert (out / "model.safetensors").is_file() or (out / "pytorch_model.bin").is_file()


@pytest.mark.parametrize("argv, message", [
    ([], "give either --annotation-file (with --image-folder) or --shapes N"),
    (["--shapes", "4", "--annotation-file", "a.json"], "give either --annotation-file"),
    (["--annotation-file", "a.json"], "--annotation-file needs --image-folder"),
    (["--shapes", "-1"], "--shapes and --probe-images must be >= 0"),
    (["--shapes", "4", "--device", "cuda:7"], None),
])
def test_cli_names_bad_arguments(argv, message, tmp_path, tiny_clip_dir, capsys):
    if message is None:
        if torch.cuda.is_available():
            pytest.skip("a CUDA device is present")
        message = "--device cuda:7: torch sees no CUDA device here"
    with pytest.raises(SystemExit):
        pretrain_tower.main(["--tower", str(tiny_clip_dir), "--out", str(tmp_path / "o")] + argv)
    assert message in capsys.readouterr().err
