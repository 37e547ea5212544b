"""The RGPT model: splicing of image and region embeddings, batches, truncation, generation."""
import inspect

import pytest
import torch

from rgpt_llava.constants import IGNORE_INDEX
from rgpt_llava.mm_utils import tokenizer_region_token
from rgpt_llava.model import RGPTConfig, RGPTLlamaForCausalLM
from rgpt_llava.model.region_encoder import adaptive_merge

from conftest import make_rgpt

# tiny tower: 56 px, patch 14 -> 4x4 grid; deconv refiner -> 16x16 map, 3.5 px per cell.
PX = 56


def ids_of(tokenizer, prompt):
    return tokenizer_region_token(prompt, tokenizer, return_tensors="pt")[None]


def box_mask(y0, y1, x0, x1):
    m = torch.zeros(PX, PX)
    m[y0:y1, x0:x1] = 1
    return m


@torch.no_grad()
def test_embedding_at_each_placeholder_is_the_projected_pooled_feature(rgpt_model, tokenizer):
    torch.manual_seed(0)
    image = torch.randn(1, 3, PX, PX)
    # region 1: pixels 0..6 (cells 0-1 of the 16x16 map); region 2: pixels 28..48 x 14..35 (cells 8-13 x 4-9)
    masks = torch.stack([box_mask(0, 7, 0, 7), box_mask(28, 49, 14, 35)])
    ids = ids_of(tokenizer, "<image>\nwhat is <region2> next to <region1>?")
    out = rgpt_model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, image, region_masks=[masks])
    embeds = out[4][0]

    fmap = rgpt_model.encode_feature_map(image)[0]  # [C, 16, 16]
    proj = rgpt_model.get_model().mm_projector
    expected_r1 = proj(fmap[:, 0:2, 0:2].mean(dim=(1, 2)))
    expected_r2 = proj(fmap[:, 8:14, 4:10].mean(dim=(1, 2)))
    expected_image = proj(adaptive_merge(fmap[None], (4, 4))[0])

    n_img = 16
    assert embeds.shape[0] == ids.shape[1] - 1 + n_img
    img_start = 1  # after BOS
    assert torch.allclose(embeds[img_start:img_start + n_img], expected_image, atol=1e-5)
    shifted = [i if i < img_start else i + n_img - 1 for i in range(ids.shape[1])]
    pos_r2, pos_r1 = [shifted[i] for i in (ids[0] <= -300).nonzero().squeeze(1).tolist()]
    assert torch.allclose(embeds[pos_r2], expected_r2, atol=1e-5)  # <region2> appears first in the text
    assert torch.allclose(embeds[pos_r1], expected_r1, atol=1e-5)
    # text tokens are the word embeddings
    emb = rgpt_model.get_model().embed_tokens
    assert torch.equal(embeds[0], emb(ids[0, :1])[0])
    assert torch.equal(embeds[-1], emb(ids[0, -1:])[0])


def pad_batch(seqs, pad_id=0):
    n = max(s.shape[1] for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : s.shape[1]] = s[0]
        att[i, : s.shape[1]] = 1
    return ids, att


@torch.no_grad()
def test_batch_with_mixed_region_counts_equals_single_samples(rgpt_model, tokenizer):
    torch.manual_seed(1)
    images = torch.randn(3, 3, PX, PX)
    a = ids_of(tokenizer, "<image>\ndescribe <region> and <region> please")
    b = ids_of(tokenizer, "<image>\ndescribe the photo")
    c = ids_of(tokenizer, "a text only question about a cat")
    masks_a = torch.stack([box_mask(3, 20, 5, 40), box_mask(30, 56, 0, 10)])
    ids, att = pad_batch([a, b, c])
    batched = rgpt_model(ids, attention_mask=att, images=images, region_masks=[masks_a, None, None]).logits
    single_a = rgpt_model(a, images=images[0:1], region_masks=[masks_a]).logits[0]
    single_b = rgpt_model(b, images=images[1:2]).logits[0]
    single_c = rgpt_model(c).logits[0]
    assert torch.allclose(batched[0, : single_a.shape[0]], single_a, atol=1e-4)
    assert torch.allclose(batched[1, : single_b.shape[0]], single_b, atol=1e-4)
    assert torch.allclose(batched[2, : single_c.shape[0]], single_c, atol=1e-4)
    # an empty [0, H, W] tensor means "no regions" as None does
    empty = rgpt_model(b, images=images[1:2], region_masks=[torch.zeros(0, PX, PX)]).logits[0]
    assert torch.allclose(empty, single_b, atol=1e-5)


def test_training_step_labels_and_gradients(tokenizer, tiny_llava_dir):
    model = make_rgpt(tiny_llava_dir).train()
    torch.manual_seed(2)
    images = torch.randn(2, 3, PX, PX)
    a = ids_of(tokenizer, "<image>\nwhat is <region1>? a cat")
    c = ids_of(tokenizer, "a text only sample")
    ids, att = pad_batch([a, c])
    labels = ids.clone()
    labels[att == 0] = IGNORE_INDEX
    prepared = model.prepare_inputs_labels_for_multimodal(ids, None, att, None, labels, images,
                                                          region_masks=[box_mask(0, 20, 0, 20)[None], None])
    new_labels = prepared[5]
    # image block (16 tokens after BOS) and the region placeholder are ignored; text labels survive in order
    assert (new_labels[0, 1:17] == IGNORE_INDEX).all()
    region_pos = (a[0] <= -300).nonzero().item() + 15
    assert new_labels[0, region_pos] == IGNORE_INDEX
    kept = new_labels[0][new_labels[0] != IGNORE_INDEX]
    assert kept.tolist() == [t for t in a[0].tolist() if t >= 0]
    out = model(ids, attention_mask=att, images=images, region_masks=[box_mask(0, 20, 0, 20)[None], None],
                labels=labels)
    out.loss.backward()
    refiner_grad = sum(p.grad.abs().sum() for p in model.get_model().mm_refiner.parameters())
    projector_grad = sum(p.grad.abs().sum() for p in model.get_model().mm_projector.parameters())
    assert torch.isfinite(out.loss) and refiner_grad > 0 and projector_grad > 0


@torch.no_grad()
def test_truncation_drops_an_embedding_with_its_placeholder(tokenizer, tiny_llava_dir):
    model = make_rgpt(tiny_llava_dir)
    image = torch.randn(1, 3, PX, PX)
    masks = torch.stack([box_mask(0, 10, 0, 10), box_mask(40, 56, 40, 56)])
    ids = ids_of(tokenizer, "<image>\nfirst <region1> then a long tail of words here <region2> end")
    full = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, image, region_masks=[masks])[4][0]
    pos = [i + 15 for i in (ids[0] <= -300).nonzero().squeeze(1).tolist()]
    cut = pos[1] - 2  # keeps <region1>, cuts <region2>
    model.config.tokenizer_model_max_length = cut
    short = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, image, region_masks=[masks])[4][0]
    assert short.shape[0] == cut
    assert torch.equal(short, full[:cut])
    assert torch.allclose(short[pos[0]], model.encode_images_and_regions(image, [masks])[1][0][0], atol=1e-6)


def test_bad_region_inputs(rgpt_model, tokenizer):
    image = torch.randn(1, 3, PX, PX)
    ids = ids_of(tokenizer, "<image>\n<region1> <region3>")
    masks = torch.stack([box_mask(0, 9, 0, 9), box_mask(9, 20, 9, 20)])
    with pytest.raises(ValueError, match=r"sample 0: the prompt refers to <region3> but 2 region\(s\)"):
        rgpt_model(ids, images=image, region_masks=[masks])
    with pytest.raises(ValueError, match="without images"):
        rgpt_model.generate(ids_of(tokenizer, "hello"), region_masks=[masks], max_new_tokens=2)
    with pytest.raises(ValueError, match="region 2 has an empty mask"):
        rgpt_model(ids_of(tokenizer, "<image>\n<region1> <region2>"), images=image,
                   region_masks=[torch.stack([masks[0], torch.zeros(PX, PX)])])
    with pytest.raises(ValueError, match="2 entries for a batch of 1"):
        rgpt_model(ids, images=image, region_masks=[masks, masks])


@torch.no_grad()
def test_generate_greedy_matches_forward_argmax(rgpt_model, tokenizer):
    torch.manual_seed(3)
    image = torch.randn(1, 3, PX, PX)
    masks = box_mask(5, 30, 5, 30)[None]
    ids = ids_of(tokenizer, "<image>\nwhat is <region1>?")
    out = rgpt_model.generate(ids, images=image, region_masks=[masks], do_sample=False, max_new_tokens=4,
                              use_cache=True)
    new = out[0][out[0] != tokenizer.bos_token_id]
    first = rgpt_model(ids, images=image, region_masks=[masks]).logits[0, -1].argmax()
    assert new[0] == first
    # changing the region changes what the model sees: the next-token distribution moves
    other = rgpt_model(ids, images=image, region_masks=[box_mask(40, 56, 40, 56)[None]]).logits[0, -1]
    assert not torch.allclose(other, rgpt_model(ids, images=image, region_masks=[masks]).logits[0, -1])


def test_forward_signature_is_explicit():
    params = inspect.signature(RGPTLlamaForCausalLM.forward).parameters
    assert {"region_masks", "cache_position", "images"} <= set(params)
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


@torch.no_grad()
def test_merge_size_and_refiner_none(tiny_llava_dir, tokenizer):
    model = make_rgpt(tiny_llava_dir, mm_merge_size=[2, 2])
    image = torch.randn(1, 3, PX, PX)
    tokens, regions = model.encode_images_and_regions(image, [box_mask(0, 28, 0, 28)[None]])
    assert tokens.shape[1] == 4
    # top-left quarter region == top-left merged image token (same cells, same projector)
    assert torch.allclose(regions[0][0], tokens[0, 0], atol=1e-5)
    plain = make_rgpt(tiny_llava_dir, mm_refiner_type="none")
    fmap = plain.encode_feature_map(image)
    assert fmap.shape[-1] == 4
    out = plain(ids_of(tokenizer, "<image>\n<region1>"), images=image, region_masks=[box_mask(0, 14, 0, 14)[None]])
    assert torch.isfinite(out.logits).all()


def test_config_round_trip(tmp_path):
    cfg = RGPTConfig(mm_refiner_type="bilinear", mm_refiner_scale=8, mm_merge_size=[12, 12])
    cfg.save_pretrained(tmp_path)
    back = RGPTConfig.from_pretrained(tmp_path)
    assert (back.model_type, back.mm_refiner_type, back.mm_refiner_scale, back.mm_merge_size) == \
        ("rgpt_llama", "bilinear", 8, [12, 12])
    assert RGPTConfig().mm_refiner_type == "deconv"  # the paper's design is the default of a fresh config


def test_sparse_lm_head_gives_the_same_loss_and_gradients(tokenizer, tiny_llava_dir):
    """sparse_lm_head applies the LM head only at supervised positions: same loss and gradients as the full head."""
    torch.manual_seed(3)
    images = torch.randn(2, 3, PX, PX)
    a = ids_of(tokenizer, "<image>\nwhat is <region1>? a cat on a mat")
    b = ids_of(tokenizer, "<image>\nname <region1> and <region2>. two dogs")
    ids, att = pad_batch([a, b])
    labels = ids.clone()
    labels[att == 0] = IGNORE_INDEX
    labels[:, :6] = IGNORE_INDEX      # a prompt part that is not supervised
    masks = [box_mask(0, 20, 0, 20)[None], torch.stack([box_mask(5, 30, 5, 30), box_mask(30, 56, 0, 56)])]
    results = []
    for sparse in (False, True):
        model = make_rgpt(tiny_llava_dir, sparse_lm_head=sparse).train()
        out = model(ids, attention_mask=att, images=images, region_masks=masks, labels=labels)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.loss.detach(), out.logits.shape, grads))
    (full_loss, full_shape, full_grads), (sparse_loss, sparse_shape, sparse_grads) = results
    assert torch.allclose(full_loss, sparse_loss, rtol=1e-6, atol=1e-6)
    assert full_grads.keys() == sparse_grads.keys() and "lm_head.weight" in sparse_grads
    for n in full_grads:
        assert torch.allclose(full_grads[n], sparse_grads[n], rtol=1e-4, atol=1e-6), n
    supervised = int(((labels[:, 1:] != IGNORE_INDEX) & (labels[:, 1:] >= 0)).sum())  # sentinels become vision tokens
    assert sparse_shape == (supervised, full_shape[-1]) and len(full_shape) == 3
    # without labels (generation) the flag changes nothing: full logits
    model = make_rgpt(tiny_llava_dir, sparse_lm_head=True)
    with torch.no_grad():
        logits = model(ids, attention_mask=att, images=images, region_masks=masks).logits
    assert logits.shape == full_shape
