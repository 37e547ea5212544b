"""SigLIP vision towers (paper Table 7): chosen by config.json, features as far as read, the region path on the SigLIP
grid, conversion, the builder, training through both stages and the CLI.

The tiny SigLIP has an 8x8 patch grid at 64 px and width 48; the tiny CLIP 4x4 at 56 px and width 32: anything that
assumed the CLIP grid (or LLaVA-1.5's 24x24 / 96x96 / 576) fails here.
"""
import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

from rgpt_llava.compat import clip_vision_body
from rgpt_llava.model.siglip_encoder import SiglipVisionTower
from rgpt_llava.model.vision_tower import build_vision_tower, tower_features
from rgpt_llava.tiny import build_tiny_clip, build_tiny_siglip

from test_train import GOOD, env, make_dataset, run  # noqa: F401  (env: tiny base LLM, images, data)


def tower_args(path, select_layer=-2, select_feature="patch"):
    return SimpleNamespace(mm_vision_tower=str(path), mm_vision_select_layer=select_layer,
                           mm_vision_select_feature=select_feature)


def layer_calls(tower):
    calls = []
    for i, layer in enumerate(clip_vision_body(tower.vision_tower).encoder.layers):
        layer.register_forward_hook(lambda m, inp, out, i=i: calls.append(i))
    return calls


@pytest.fixture(scope="module")
def siglip_llava_dir(tmp_path_factory, tiny_tokenizer_dir, tiny_siglip_dir):
    """A LLaVA-format checkpoint (Llama + projector) whose mm_vision_tower is the tiny SigLIP."""
    from rgpt_llava.tiny import build_tiny_llava
    return build_tiny_llava(tmp_path_factory.mktemp("llava_siglip"), tiny_tokenizer_dir, tiny_siglip_dir)


@pytest.fixture(scope="module")
def siglip_rgpt_dir(tmp_path_factory, siglip_llava_dir):
    from rgpt_llava.convert import convert
    return convert(siglip_llava_dir, str(tmp_path_factory.mktemp("rgpt_siglip")))


# ---- the tower --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("select_layer,runs", [(-2, [0, 1]), (-1, [0, 1, 2]), (-4, []), (1, [0])])
def test_siglip_features_are_the_full_forwards_without_the_unread_layers(tiny_siglip_dir, select_layer, runs):
    tower = build_vision_tower(tower_args(tiny_siglip_dir, select_layer))
    assert type(tower) is SiglipVisionTower and tower.is_loaded
    images = torch.randn(2, 3, 64, 64)
    reference = tower.vision_tower(images, output_hidden_states=True).hidden_states[select_layer]  # full forward
    assert torch.equal(tower(images), reference)     # LLaVA's forward, SigLIP's selection: no CLS token dropped
    calls = layer_calls(tower)
    ours = tower_features(tower, images)
    assert torch.equal(ours, reference) and ours.shape == (2, 64, 48)
    assert calls == runs                             # the layers after the selected one never ran


def test_the_tower_class_follows_config_json_not_the_folder_name(tmp_path):
    # LLaVA's factory keys hub names on "openai"/"laion": a folder called so, holding SigLIP, is SigLIP all the same.
    siglip = build_tiny_siglip(tmp_path / "openai-clip-vit-large-patch14-336")
    clip = build_tiny_clip(tmp_path / "google-siglip-so400m-patch14-384")
    lazy = build_vision_tower(tower_args(siglip), delay_load=True)
    assert type(lazy) is SiglipVisionTower and not lazy.is_loaded
    assert (lazy.num_patches_per_side, lazy.hidden_size, lazy.num_patches) == (8, 48, 64)  # from the config alone
    assert type(build_vision_tower(tower_args(clip), delay_load=True)) is CLIPVisionTower
    # The training arguments name it --vision_tower (LLaVA's ModelArguments), not mm_vision_tower.
    args = SimpleNamespace(vision_tower=siglip, mm_vision_select_layer=-2, mm_vision_select_feature="patch")
    assert type(build_vision_tower(args)) is SiglipVisionTower


def test_a_whole_siglip_model_folder_gives_its_vision_half(tmp_path):
    """google/siglip-so400m-patch14-384 is a SiglipModel (model_type 'siglip', text + vision): its vision_config
    and vision weights make the tower."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel
    torch.manual_seed(0)
    cfg = SiglipConfig(text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=1, vocab_size=50),
                       vision_config=dict(hidden_size=40, intermediate_size=80, num_hidden_layers=2,
                                          num_attention_heads=2, image_size=48, patch_size=8))
    full = SiglipModel(cfg)
    full.save_pretrained(tmp_path / "siglip_full")
    SiglipImageProcessor(size={"height": 48, "width": 48}).save_pretrained(tmp_path / "siglip_full")
    tower = build_vision_tower(tower_args(tmp_path / "siglip_full"), delay_load=True)
    assert type(tower) is SiglipVisionTower and (tower.num_patches_per_side, tower.hidden_size) == (6, 40)
    tower.load_model()
    whole = full.state_dict()
    loaded = tower.vision_tower.state_dict()
    # every weight: the vision half's (transformers 5 saves SiglipVisionModel's without the vision_model. prefix)
    assert loaded and all(torch.equal(v, whole.get(k, whole.get("vision_model." + k))) for k, v in loaded.items())
    images = torch.randn(1, 3, 48, 48)
    assert torch.equal(tower_features(tower, images),
                       tower.vision_tower(images, output_hidden_states=True).hidden_states[-2])


def test_bad_towers_are_named(tmp_path, tiny_siglip_dir):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match=r"vision tower .*bert: model_type 'bert' is neither CLIP .* nor SigLIP"):
        build_vision_tower(tower_args(tmp_path / "bert"), delay_load=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"vision tower .*empty: no config.json"):
        build_vision_tower(tower_args(tmp_path / "empty"), delay_load=True)
    with pytest.raises(ValueError, match="SigLIP has no CLS token"):
        build_vision_tower(tower_args(tiny_siglip_dir, select_feature="cls_patch"), delay_load=True)


# ---- preprocessing and the region path ----------------------------------------------------------------------------
def test_pad_and_region_geometry_with_the_siglip_processor(tiny_siglip_dir):
    """LLaVA's 'pad' fills with the processor's image_mean (0.5 for SigLIP), then SigLIP resizes to 64x64 without a
    crop; a region follows the same chain onto the 32x32 refined map."""
    from transformers import SiglipImageProcessor
    from llava.mm_utils import process_images
    from rgpt_llava.geometry import model_input_size, parse_region, process_regions

    processor = SiglipImageProcessor.from_pretrained(tiny_siglip_dir)
    assert model_input_size(processor) == (64, 64)
    image = Image.new("RGB", (128, 64), (255, 255, 255))       # wide: padded above and below to 128x128
    pixels = process_images([image], processor, SimpleNamespace(image_aspect_ratio="pad"))[0]
    assert pixels.shape == (3, 64, 64)
    assert torch.allclose(pixels[:, 0, 0], torch.full((3,), (127 / 255 - 0.5) / 0.5), atol=1e-6)  # the pad colour
    assert torch.allclose(pixels[:, 32, 32], torch.ones(3), atol=1e-6)                          # the white photo
    whole = parse_region("box:0,0,128,64", 0, image.size)
    mask = process_regions([whole], image.size, processor, "pad", map_size=(32, 32))[0]
    expected = torch.zeros(32, 32)
    expected[8:24] = 1                                           # rows 32..96 of 128 -> cells 8..24 of 32
    assert torch.equal(mask, expected)


@torch.no_grad()
def test_converted_siglip_checkpoint_loads_and_pools_on_its_own_grid(siglip_llava_dir, siglip_rgpt_dir):
    from rgpt_llava.model.builder import load_pretrained_model
    from rgpt_llava.model.region_encoder import adaptive_merge

    cfg = json.load(open(f"{siglip_rgpt_dir}/config.json"))
    # conversion keeps the source's tower (and its width); the builder needs nothing but config.json to load it
    assert cfg["mm_vision_tower"] == json.load(open(f"{siglip_llava_dir}/config.json"))["mm_vision_tower"]
    assert cfg["mm_hidden_size"] == 48 and cfg["model_type"] == "rgpt_llama"
    _, model, processor, _ = load_pretrained_model(siglip_rgpt_dir, None, device="cpu")
    tower = model.get_vision_tower()
    assert type(tower) is SiglipVisionTower and type(processor).__name__ in (
        "SiglipImageProcessor", "SiglipImageProcessorPil")  # the PIL class: transformers 5 without torchvision
    assert model.merge_size() == (8, 8) and model.region_map_size() == (32, 32)

    images = torch.randn(1, 3, 64, 64)
    image_tokens, _ = model.encode_images_and_regions(images)
    assert image_tokens.shape == (1, 64, model.config.hidden_size)        # 8x8 image tokens
    # deconv_residual starts as nearest upsampling: the pooled map is the tower's grid, bit for bit
    projector = model.get_model().mm_projector
    assert torch.equal(image_tokens[0], projector(tower_features(tower, images)[0]))

    fmap = model.encode_feature_map(images)
    assert fmap.shape == (1, 48, 32, 32)
    full = torch.ones(1, 32, 32)
    corner = torch.zeros(1, 32, 32)
    corner[0, :4, :4] = 1                                                 # one tower patch: 4x4 refined cells
    _, regions = model.encode_images_and_regions(images, [torch.cat([full, corner])])
    assert torch.allclose(regions[0][0], projector(fmap.mean((2, 3))[0]), atol=1e-5)
    assert torch.allclose(regions[0][1], projector(adaptive_merge(fmap, (8, 8))[0, 0]), atol=1e-5)


def test_text_only_samples_get_a_blank_image_of_the_siglip_size(env, tiny_tokenizer_dir, tiny_siglip_dir):
    """LLaVA's blank image is crop_size, which a SigLIP processor has not: it is the size the processor resizes to."""
    from transformers import SiglipImageProcessor
    _, module = make_dataset(env, tiny_tokenizer_dir, env.data,
                             image_processor=SiglipImageProcessor.from_pretrained(tiny_siglip_dir),
                             region_map_size=(32, 32))
    ds = module["train_dataset"]
    assert ds[0]["image"].shape == (3, 64, 64) and ds[0]["region_masks"].shape == (2, 32, 32)
    text_only = [i for i, s in enumerate(ds.list_data_dict) if "image" not in s][0]
    assert ds[text_only]["image"].shape == (3, 64, 64)


def test_cli_names_a_tower_folder_that_is_neither(capsys, tmp_path, siglip_rgpt_dir, images_dir):
    from rgpt_llava.serve.cli import main
    bad = tmp_path / "tower"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "vit"}))
    ckpt = tmp_path / "ckpt"
    shutil.copytree(siglip_rgpt_dir, ckpt)
    cfg = json.load(open(ckpt / "config.json"))
    cfg["mm_vision_tower"] = str(bad)
    (ckpt / "config.json").write_text(json.dumps(cfg))
    code = main(["--model-path", str(ckpt), "--image-file", str(images_dir / "chelsea.jpg"), "--device", "cpu",
                 "--query", "hi"])
    err = capsys.readouterr().err
    assert code == 2 and f"vision tower {bad}: model_type 'vit' is neither CLIP" in err


@torch.no_grad()
def test_a_llava_hf_checkpoint_with_a_siglip_tower_gives_transformers_logits(tmp_path, tiny_tokenizer_dir):
    """llava-hf with a SigLIP tower and strategy 'full' (every token: SigLIP has no CLS) converts; its tower is
    extracted as a SiglipVisionModel folder and the converted model's logits are transformers' own."""
    from transformers import LlavaForConditionalGeneration, SiglipImageProcessor, SiglipVisionConfig
    from test_convert_llava_hf import build_tiny_llava_hf, hf_input_ids
    from rgpt_llava.convert import convert_llava_hf
    from rgpt_llava.mm_utils import tokenizer_region_token
    from rgpt_llava.model.builder import load_pretrained_model

    vision = SiglipVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=3,
                                image_size=64, patch_size=8)
    hf_dir = build_tiny_llava_hf(tmp_path / "hf", tiny_tokenizer_dir, vision=vision,
                                 processor=SiglipImageProcessor(size={"height": 64, "width": 64}),
                                 vision_feature_select_strategy="full")
    out = convert_llava_hf(hf_dir, str(tmp_path / "rgpt"))
    cfg = json.load(open(f"{out}/config.json"))
    assert json.load(open(f"{cfg['mm_vision_tower']}/config.json"))["model_type"] == "siglip_vision_model"
    assert (cfg["mm_vision_select_feature"], cfg["mm_hidden_size"]) == ("patch", 48)
    tok, model, processor, _ = load_pretrained_model(out, None, device="cpu")
    assert type(model.get_vision_tower()) is SiglipVisionTower and type(processor) is SiglipImageProcessor
    hf = LlavaForConditionalGeneration.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    torch.manual_seed(0)
    image = torch.randn(1, 3, 64, 64)
    ids = tokenizer_region_token("<image>\nwhat is in the image?", tok, return_tensors="pt")[None]
    hf_ids = hf_input_ids(ids[0], hf.config.image_token_index, 64)
    ours = model(ids, images=image).logits
    theirs = hf(input_ids=hf_ids, pixel_values=image, attention_mask=torch.ones_like(hf_ids)).logits
    assert ours.shape == theirs.shape == (1, ids.shape[1] - 1 + 64, model.config.vocab_size)   # 8x8 image tokens
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


# ---- stage 1 -> stage 2 -> CLI --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_siglip_rgpt_trains_both_stages_and_answers(env, tiny_siglip_dir, images_dir):
    siglip = dict(vision_tower=tiny_siglip_dir)
    stage1 = env.root / "siglip_stage1"
    proc = run(env, stage1, tune_mm_mlp_adapter=True, num_train_epochs=2, **siglip)
    assert "region masks: 32x32, the refined map's resolution" in proc.stdout + proc.stderr
    weights = torch.load(stage1 / "mm_projector.bin")
    assert weights["model.mm_refiner.up1.weight"].shape == (48, 48, 2, 2)   # the SigLIP width
    assert weights["model.mm_projector.0.weight"].shape[1] == 48
    cfg = json.load(open(stage1 / "config.json"))
    assert cfg["mm_vision_tower"] == tiny_siglip_dir and cfg["mm_hidden_size"] == 48

    stage2 = env.root / "siglip_stage2"
    run(env, stage2, pretrain_mm_mlp_adapter=stage1 / "mm_projector.bin", learning_rate=2e-4, data=env.good,
        **siglip)
    assert json.load(open(stage2 / "config.json"))["mm_vision_tower"] == tiny_siglip_dir
    trained_refiner = torch.load(stage1 / "mm_projector.bin")["model.mm_refiner.up2.weight"]

    from rgpt_llava.model.builder import load_pretrained_model
    _, model, _, _ = load_pretrained_model(str(stage2), None, device="cpu")
    assert type(model.get_vision_tower()) is SiglipVisionTower
    assert torch.allclose(model.get_model().mm_refiner.up2.weight, trained_refiner, atol=0.05)  # from stage 1
    del model

    answer = subprocess.run(
        [sys.executable, "-m", "rgpt_llava.serve.cli", "--model-path", str(stage2), "--image-file",
         str(images_dir / "chelsea.jpg"), "--device", "cpu", "--region", "box:10,20,110,220",
         "--query", "what is <region1>?", "--temperature", "0", "--max-new-tokens", "4"],
        capture_output=True, text=True, timeout=300)
    assert answer.returncode == 0, answer.stderr[-3000:]
    assert "region 1: box, box [10, 20, 110, 220]" in answer.stdout
    reply = answer.stdout.split("ASSISTANT:", 1)[1].strip()
    assert reply, answer.stdout


def test_the_tiny_command_writes_a_siglip_llava_that_converts_and_answers(tmp_path, real_tokenizer_dir, images_dir,
                                                                         capsys):
    """`python -m rgpt_llava.tiny --tower siglip` (its main, in process): the LLaVA it writes reads the SigLIP it
    wrote, converts, and the CLI answers about a region on the 8x8 grid; a size the tower cannot take is named."""
    from rgpt_llava import tiny
    from rgpt_llava.convert import convert
    from rgpt_llava.serve.cli import main as cli_main
    out = tmp_path / "tiny"
    tiny.main(["--out", str(out), "--tower", "siglip", "--tokenizer", real_tokenizer_dir])
    assert f"tiny siglip tower: {out / 'siglip'}" in capsys.readouterr().out and not (out / "clip").exists()
    assert json.load(open(out / "siglip" / "config.json"))["model_type"] == "siglip_vision_model"
    assert json.load(open(out / "llava" / "config.json"))["mm_vision_tower"] == str(out / "siglip")

    rgpt = convert(str(out / "llava"), str(tmp_path / "rgpt"))
    assert cli_main(["--model-path", rgpt, "--image-file", str(images_dir / "chelsea.jpg"), "--device", "cpu",
                     "--region", "box:10,20,110,220", "--query", "what is <region1>?", "--temperature", "0",
                     "--max-new-tokens", "3"]) == 0
    assert "region 1: box, box [10, 20, 110, 220]" in capsys.readouterr().out

    with pytest.raises(SystemExit) as e:
        tiny.main(["--out", str(tmp_path / "bad"), "--tower", "siglip", "--image-size", "60"])
    assert e.value.code == 2
    assert "--image-size 60: the tiny siglip tower needs a multiple of its patch size 8" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()   # refused before anything was written


def test_the_api_serves_a_siglip_rgpt_as_its_engine_answers(siglip_rgpt_dir, images_dir):
    """The OpenAI-compatible API on a SigLIP-tower checkpoint: regions reach the 8x8-grid model, and the reply is the
    engine's own greedy answer for the same prompt and regions."""
    from starlette.testclient import TestClient

    from rgpt_llava.geometry import parse_region
    from rgpt_llava.serve import backends as B, chat as C, openai_api as A
    from rgpt_llava.serve.engine import RegionEngine, Sampling
    from test_serve_api import data_url, image_part, region, user

    engine = RegionEngine.load(siglip_rgpt_dir, device="cpu", name="tiny-siglip-rgpt")
    assert type(engine.model.get_vision_tower()) is SiglipVisionTower
    photo = Image.open(images_dir / "chelsea.jpg").convert("RGB")
    question = "What is <region1> next to <region2>?"
    mask = Image.new("L", photo.size)
    mask.paste(255, (100, 50, 300, 200))
    with TestClient(A.build_app(B.LocalBackend(engine, "vicuna_v1"), max_regions=8)) as client:
        r = client.post("/v1/chat/completions", json={
            "model": "tiny-siglip-rgpt", "temperature": 0, "max_tokens": 8,
            "messages": [user(image_part(photo), question, region({"box": [10, 20, 110, 220]}),
                              region({"mask": data_url(mask)}))]})
    assert r.status_code == 200, r.text
    prompt = C.conversation_prompt([("user", "<image>\n" + question)], None, "vicuna_v1")
    regions = [parse_region(s, k, photo.size) for k, s in enumerate(["box:10,20,110,220", "box:100,50,300,200"])]
    expected = engine.answer(engine.prepare(photo, [(prompt, regions)], Sampling(temperature=0, max_new_tokens=8)))[0]
    assert r.json()["choices"][0]["message"]["content"] == expected
