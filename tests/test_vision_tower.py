"""The tower stops at the layer LLaVA reads: the same features, bit for bit, without running the layers after it."""
from types import SimpleNamespace

import pytest
import torch

from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

from rgpt_llava.compat import clip_vision_body
from rgpt_llava.model.vision_tower import tower_features
from rgpt_llava.tiny import build_tiny_clip


def llava_tower(path, select_layer=-2, select_feature="patch"):
    tower = CLIPVisionTower(str(path), SimpleNamespace(mm_vision_select_layer=select_layer,
                                                       mm_vision_select_feature=select_feature))
    return tower.eval()


def layer_calls(tower):
    calls = []
    for i, layer in enumerate(clip_vision_body(tower.vision_tower).encoder.layers):
        layer.register_forward_hook(lambda m, inp, out, i=i: calls.append(i))
    return calls


@pytest.mark.parametrize("select_layer,select_feature,runs", [
    (-2, "patch", [0, 1]), (-1, "patch", [0, 1, 2]), (-4, "patch", []), (1, "cls_patch", [0]),
    (-2, "cls_patch", [0, 1]),
])
def test_tiny_tower_features_are_llavas_without_the_unread_layers(tmp_path, select_layer, select_feature, runs):
    tower = llava_tower(build_tiny_clip(tmp_path / "clip", num_layers=3), select_layer, select_feature)
    images = torch.randn(2, 3, 56, 56)
    reference = tower(images)                      # LLaVA's forward: all 3 layers, hidden_states[select_layer]
    calls = layer_calls(tower)
    ours = tower_features(tower, images)
    assert torch.equal(ours, reference) and ours.dtype == reference.dtype
    assert calls == runs                           # the layers after the selected one never ran
    assert ours.shape[1] == 16 + (select_feature == "cls_patch")


def test_a_select_layer_outside_the_tower_is_named(tmp_path):
    tower = llava_tower(build_tiny_clip(tmp_path / "clip", num_layers=3), select_layer=-5)
    with pytest.raises(ValueError, match="mm_vision_select_layer -5 does not exist in a tower of 3 layers"):
        tower_features(tower, torch.randn(1, 3, 56, 56))


@pytest.mark.slow
def test_clip_large_shaped_tower_is_bit_identical(tmp_path):
    """CLIP ViT-L/14-336's shape (24 layers x 1024, 16 heads, 336 px; random weights): layer -2 without layer 24."""
    from transformers import CLIPVisionConfig, CLIPVisionModel
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=336, patch_size=14, projection_dim=768)
    CLIPVisionModel(cfg).save_pretrained(tmp_path / "clip_l")
    from transformers import CLIPImageProcessor
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(
        tmp_path / "clip_l")
    tower = llava_tower(tmp_path / "clip_l")
    images = torch.randn(1, 3, 336, 336)
    reference = tower(images)
    calls = layer_calls(tower)
    ours = tower_features(tower, images)
    assert ours.shape == (1, 576, 1024) and torch.equal(ours, reference)
    assert calls == list(range(23))


def test_loading_a_tower_leaves_the_random_state_alone(tiny_clip_dir):
    # LLaVA builds the projector (RGPT the refiner) from the global RNG right after the tower loads; transformers
    # 4.37 drew from it while loading CLIP and 5.x does not, so the same --seed started other weights per stack
    from rgpt_llava.model.vision_tower import build_vision_tower
    torch.manual_seed(123)
    before = torch.get_rng_state()
    tower = build_vision_tower(SimpleNamespace(mm_vision_tower=tiny_clip_dir, mm_vision_select_layer=-2,
                                               mm_vision_select_feature="patch"))
    assert tower.is_loaded and torch.equal(torch.get_rng_state(), before)
