"""RGPT on vLLM (rgpt_llava.vllm): an RGPT checkpoint loads in vLLM unchanged, and greedy answers through vLLM equal
the HF engine's token for token (CLIP and SigLIP towers, 1 to 16 regions, <region> and <regionN>, several turns, many
requests at once); bad requests get the HF engine's errors. Needs the vllm stack (RGPT_STACK=vllm)."""
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: the vllm stack (RGPT_STACK=vllm) runs these tests")

import os  # noqa: E402

from PIL import Image  # noqa: E402

from rgpt_llava import generation  # noqa: E402
from rgpt_llava.constants import IMAGE_TOKEN_INDEX, REGION_TOKEN_INDEX  # noqa: E402
from rgpt_llava.geometry import parse_region  # noqa: E402
from rgpt_llava.serve.engine import RegionEngine, Sampling  # noqa: E402
from rgpt_llava.serve.inputs import InputError  # noqa: E402

NEW_TOKENS = 16
GREEDY = Sampling(temperature=0, max_new_tokens=NEW_TOKENS)
BOXES = ["box:10,20,200,180", "box:300,100,500,350", "polygon:50,300,250,260,200,390", "box:0,0,600,400"]  # 600x400

# The prompts the exactness tests ask: (text, number of regions).
PROMPTS = {
    "one <region>": ("A chat. USER: <image>\nWhat is in <region>? ASSISTANT:", 1),
    "<regionN>, reversed and repeated": (
        "A chat. USER: <image>\nIs <region2> left of <region1>? Compare <region2> with <region3>. ASSISTANT:", 3),
    "sixteen regions": ("A chat. USER: <image>\nList " + ", ".join(f"<region{k}>" for k in range(1, 17))
                        + ". ASSISTANT:", 16),
    "several turns": ("A chat. USER: <image>\nWhat is <region1>? ASSISTANT: a cup of coffee.</s>"
                      "USER: And <region2>, beside <region1>? ASSISTANT: a saucer.</s>USER: Describe <region2>. "
                      "ASSISTANT:", 2),
    "no region": ("A chat. USER: <image>\nDescribe the image. ASSISTANT:", 0),
    # not the prompt builder's form: the multimodal path sends it as one item over image and region
    "a region before the image": ("A chat. USER: Look at <region1>. <image>\nWhat is it? ASSISTANT:", 1),
}


def tiny_rgpt_for_vllm(out_dir, tokenizer_dir, tower_dir, **convert_options):
    """A tiny RGPT checkpoint that vLLM's CPU attention takes: 2 heads of 32 (its kernels have no head size 16, the
    conftest checkpoints' 4 x 16), a random deconvolution refiner (not the identity-preserving default)."""
    from rgpt_llava.convert import convert
    from rgpt_llava.tiny import build_tiny_llava
    llava = build_tiny_llava(out_dir / "llava", tokenizer_dir, tower_dir, num_attention_heads=2, num_key_value_heads=2)
    return convert(llava, str(out_dir / "rgpt"), refiner="deconv", **convert_options)


@pytest.fixture(scope="module", params=["clip", "siglip"])
def checkpoint(request, tmp_path_factory, tiny_tokenizer_dir, real_tokenizer_dir, tiny_clip_dir, tiny_siglip_dir):
    """A tiny checkpoint per tower: CLIP with the tiny tokenizer, SigLIP with LLaMA's (32k ids) and a merged 4x4
    image-token grid."""
    out = tmp_path_factory.mktemp(f"vllm_{request.param}")
    if request.param == "clip":
        return tiny_rgpt_for_vllm(out, tiny_tokenizer_dir, tiny_clip_dir)
    return tiny_rgpt_for_vllm(out, real_tokenizer_dir, tiny_siglip_dir, merge_size=(4, 4))


@pytest.fixture(scope="module", params=["multimodal", "embeds"])
def engines(request, checkpoint):
    """(HF engine, vLLM engine) on one checkpoint, for each way requests reach vLLM (rgpt_llava.vllm.engine.PATHS):
    the vision side inside vLLM, or prompt embeddings. vLLM started once per checkpoint and path."""
    from rgpt_llava.vllm.engine import VLLMRegionEngine
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")   # GiB: the default would take a share of the machine
    hf = RegionEngine.load(checkpoint, device="cpu")
    served = VLLMRegionEngine.load(checkpoint, path=request.param)
    yield hf, served
    served.close()


@pytest.fixture(scope="module")
def photo(images_dir):
    return Image.open(images_dir / "coffee.jpg").convert("RGB")


def regions(image, n, offset=0):
    """``n`` distinct regions: the shapes above, shifted so that no two coincide."""
    specs = []
    for k in range(n):
        kind, coords = BOXES[k % len(BOXES)].split(":")
        shift = 7 * (k // len(BOXES)) + offset
        nums = [max(0, min(int(c) + shift, 400 if i % 2 else 600)) for i, c in enumerate(coords.split(","))]
        specs.append(f"{kind}:" + ",".join(map(str, nums)))
    return [parse_region(s, k, image.size) for k, s in enumerate(specs)]


def hf_ids(hf, job):
    return generation.generate_same_image(hf.model, job.image, job.prompts, job.masks, job.max_new_tokens,
                                          hf.tokenizer.eos_token_id)


@pytest.mark.parametrize("case", sorted(PROMPTS))
def test_greedy_tokens_equal_the_hf_engine(engines, photo, case):
    hf, served = engines
    prompt, n = PROMPTS[case]
    items = [(prompt, regions(photo, n))]
    job, vjob = hf.prepare(photo, items, GREEDY), served.prepare(photo, items, GREEDY)
    assert vjob.prompts == job.prompts                        # the same ids with the same sentinels
    expected = hf_ids(hf, job)[0]
    got = generation.cut_at_eos(served.generated_ids([vjob])[0][0], hf.tokenizer.eos_token_id)
    assert got == expected
    assert len(expected) >= 4, "an answer this short would prove little"
    assert served.answer(vjob) == hf.answer(job)


def test_regions_change_the_answer_as_on_the_hf_engine(engines, photo):
    """The region embeddings reach vLLM: other regions in the same prompt give another answer, the HF engine's."""
    hf, served = engines
    prompt, n = PROMPTS["<regionN>, reversed and repeated"]
    answers = {name: [engine.answer(engine.prepare(photo, [(prompt, regions(photo, n, offset))], GREEDY))[0]
                      for offset in (0, 100)] for name, engine in (("hf", hf), ("vllm", served))}
    assert answers["vllm"] == answers["hf"]
    assert answers["hf"][0] != answers["hf"][1]      # else this test could not see regions ignored


def test_requests_on_one_image_reuse_its_prefix_in_vllm(engines, photo):
    """The multimodal path's image item is the image alone: a second request on the same image, about another
    region, finds the KV blocks through the image's tokens in vLLM's prefix cache (with one item over image and
    regions, the blocks holding image tokens hashed differently for every region)."""
    from vllm import SamplingParams

    from rgpt_llava.vllm.engine import multimodal_request
    hf, served = engines
    if served.path != "multimodal":
        pytest.skip("the embeds path sends embeddings, which vLLM does not cache by image")
    block = served.llm.llm_engine.vllm_config.cache_config.block_size
    # text after the image long enough that the blocks holding image tokens are full before the region placeholder
    prompt = "A chat. USER: <image>\n" + "Look closely at the picture. " * (block // 3 + 2) + "What is <region1>? ASSISTANT:"
    params = SamplingParams(temperature=0, max_tokens=1, detokenize=False)

    def cached(offset):
        """(prompt tokens vLLM found cached, where the image's tokens end, where the region placeholder stands)"""
        job = served.prepare(photo, [(prompt, regions(photo, 1, offset))], GREEDY)
        ids = list(job.prompts[0])
        image_end = ids.index(IMAGE_TOKEN_INDEX) + served.image_tokens
        region_at = next(i for i, t in enumerate(ids) if t <= REGION_TOKEN_INDEX) + served.image_tokens - 1
        request = multimodal_request(job, 0, served.image_tokens, served.map_size)
        return served.llm.generate([request], params, use_tqdm=False)[0].num_cached_tokens, image_end, region_at
    served.llm.reset_prefix_cache()
    first, _, _ = cached(0)
    second, image_end, region_at = cached(37)
    reusable = (region_at // block) * block         # the full blocks before the region placeholder
    assert reusable >= image_end, "the prompt is too short to show the image's blocks reused"
    assert first == 0 and second >= reusable, (first, second, reusable, block)


def test_many_requests_at_once_equal_one_at_a_time_on_the_hf_engine(engines, photo):
    hf, served = engines
    requests = []
    for k, (prompt, n) in enumerate(PROMPTS.values()):
        # several choices in one request (one question per region), on shifted regions per request
        requests.append([(prompt, regions(photo, n, k)), (PROMPTS["one <region>"][0], regions(photo, 1, 2 * k))])
    jobs = [served.prepare(photo, items, GREEDY) for items in requests]
    assert served.answer_many(jobs) == [hf.answer(hf.prepare(photo, items, GREEDY)) for items in requests]


def test_stop_strings_length_and_finish_reasons_equal_the_hf_engine(engines, photo):
    hf, served = engines
    prompt, n = PROMPTS["several turns"]
    items = [(prompt, regions(photo, n))]
    full = hf.answer(hf.prepare(photo, items, GREEDY))[0]
    for sampling in (Sampling(temperature=0, max_new_tokens=NEW_TOKENS, stop=(full[3:6],)),
                     Sampling(temperature=0, max_new_tokens=3),
                     Sampling(temperature=0, max_new_tokens=NEW_TOKENS, ignore_eos=True)):
        ours = [d for step in served.generate(served.prepare(photo, items, sampling)) for d in step]
        theirs = [d for step in hf.generate(hf.prepare(photo, items, sampling), stream=False) for d in step]
        assert "".join(d.text for d in ours) == "".join(d.text for d in theirs)
        assert (ours[-1].finish_reason, ours[-1].completion_tokens) == \
            (theirs[-1].finish_reason, theirs[-1].completion_tokens)


@pytest.mark.parametrize("prompt, n, image", [
    ("USER: <image>\nWhat is <region3>? ASSISTANT:", 2, True),           # a placeholder without its region
    ("USER: <image>\nWhat is <region1>? ASSISTANT:", 2, True),           # a region nobody asks about
    ("USER: What is <region1>? ASSISTANT:", 1, False),                   # regions without an image
    ("USER: <image>\nWhat is it? ASSISTANT:", 0, False),                 # <image> without an image
    ("USER: <image>\n" + "<region>" * 65 + " ASSISTANT:", 65, True),     # over the region limit
])
def test_bad_requests_get_the_hf_engines_errors(engines, photo, prompt, n, image):
    hf, served = engines
    items = [(prompt, regions(photo, n))]
    errors = []
    for engine in (hf, served):
        with pytest.raises(InputError) as e:
            engine.prepare(photo if image else None, items, GREEDY)
        errors.append((str(e.value), e.value.param))
    assert errors[0] == errors[1]
