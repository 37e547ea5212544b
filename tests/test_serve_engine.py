"""The serving engine: the same greedy answers as model.generate and the evaluation path, sampling that a seed fixes,
stop strings, length limits, streaming, and requests refused before any generation."""
import pytest
from PIL import Image

from rgpt_llava import generation
from rgpt_llava.geometry import parse_region
from rgpt_llava.serve.engine import Delta, RegionEngine, Sampling, ChoiceText, model_name_of
from rgpt_llava.serve.inputs import InputError

PROMPT = "A chat. USER: <image>\nWhat is <region1> next to <region2>? ASSISTANT:"


@pytest.fixture(scope="module")
def engine(tiny_rgpt_dir):
    return RegionEngine.load(tiny_rgpt_dir, device="cpu")


@pytest.fixture(scope="module")
def photo(images_dir):
    return Image.open(images_dir / "coffee.jpg").convert("RGB")


def regions(image, *specs):
    return [parse_region(s, k, image.size) for k, s in enumerate(specs)]


def test_greedy_answers_equal_generate_and_the_eval_path(engine, photo):
    regs = regions(photo, "box:10,20,200,180", "box:300,100,500,350")
    job = engine.prepare(photo, [(PROMPT, regs)], Sampling(temperature=0, max_new_tokens=10))
    ours = engine.answer(job)[0]
    eos = engine.tokenizer.eos_token_id
    naive = generation.generate_naive(engine.model, engine.tokenizer, [job.image], job.prompts, job.masks, 10)[0]
    fast = generation.generate_same_image(engine.model, job.image, job.prompts, job.masks, 10, eos)[0]
    assert naive == fast                                            # model.generate, the evaluation path
    assert ours == engine.tokenizer.decode(fast, skip_special_tokens=True)   # and the engine


def test_batched_choices_equal_one_at_a_time(engine, photo):
    a, b = "box:10,20,200,180", "polygon:300,100,500,100,450,350"
    greedy = Sampling(temperature=0, max_new_tokens=8)
    single = [engine.answer(engine.prepare(photo, [(p, regions(photo, *r))], greedy))[0]
              for p, r in [(PROMPT, (a, b)), (PROMPT, (b, a)), ("USER: <image>\nhi ASSISTANT:", ())]]
    batch = engine.answer(engine.prepare(photo, [(PROMPT, regions(photo, a, b)), (PROMPT, regions(photo, b, a)),
                                                 ("USER: <image>\nhi ASSISTANT:", [])],
                                         Sampling(temperature=0, max_new_tokens=8)))
    assert batch == single


def test_a_seed_fixes_a_sampled_answer(engine, photo):
    regs = regions(photo, "box:10,20,200,180", "box:300,100,500,350")

    def sample(seed):
        return engine.answer(engine.prepare(photo, [(PROMPT, regs)] * 3,
                                            Sampling(temperature=1.5, top_p=0.95, max_new_tokens=12, seed=seed)))
    first, again, other = sample(7), sample(7), sample(8)
    assert first == again and first != other
    assert len(set(first)) > 1          # three choices of one prompt, drawn differently


def test_stop_strings_end_a_choice_and_are_not_sent(engine, photo):
    regs = regions(photo, "box:10,20,200,180", "box:300,100,500,350")
    full = engine.answer(engine.prepare(photo, [(PROMPT, regs)], Sampling(temperature=0, max_new_tokens=16)))[0]
    assert len(full) > 6, full
    stop = full[3:6]
    deltas = [d for step in engine.generate(engine.prepare(
        photo, [(PROMPT, regs)], Sampling(temperature=0, max_new_tokens=16, stop=(stop, "never there"))))
        for d in step]
    text = "".join(d.text for d in deltas)
    assert text == full[:full.find(stop)]
    assert deltas[-1].finish_reason == "stop"


def test_length_finish_and_token_counts(engine, photo):
    job = engine.prepare(photo, [(PROMPT, regions(photo, "box:10,20,200,180", "box:300,100,500,350"))],
                         Sampling(temperature=0, max_new_tokens=3))
    steps = list(engine.generate(job))
    last = steps[-1][-1]
    assert last.finish_reason in ("length", "stop") and last.completion_tokens <= 3
    if last.finish_reason == "length":
        assert last.completion_tokens == 3
    assert job.prompt_tokens[0] == len(job.prompts[0]) - 1 + engine.image_tokens


def test_requests_are_refused_before_generation(engine, photo):
    regs = regions(photo, "box:10,20,200,180")
    cases = [
        (photo, [("USER: <image>\n<region2>? ASSISTANT:", regs)], Sampling(), r"refers to region\(s\) \[2\]"),
        (photo, [("USER: <image>\nhi ASSISTANT:", regs)], Sampling(), r"region\(s\) \[1\] are not referenced"),
        (None, [("USER: <region1>? ASSISTANT:", regs)], Sampling(), "regions were given without an image"),
        (photo, [("USER: no image token ASSISTANT:", [])], Sampling(), "exactly one <image>"),
        (None, [("USER: <image> ASSISTANT:", [])], Sampling(), "no image was given"),
        (photo, [("USER: <image>" + " word" * 3000 + " ASSISTANT:", [])], Sampling(), "the model's context is"),
        (photo, [("USER: <image>\nhi ASSISTANT:", [])], Sampling(max_new_tokens=0), "max_new_tokens must be"),
        (photo, [("USER: <image>\nhi ASSISTANT:", [])], Sampling(temperature=-1), "temperature must be"),
        (photo, [("USER: <image>\nhi ASSISTANT:", [])], Sampling(top_p=0), "top_p must be"),
    ]
    for image, items, sampling, message in cases:
        with pytest.raises(InputError, match=message):
            engine.prepare(image, items, sampling)


def test_a_region_cut_away_by_the_crop_is_named(tiny_rgpt_dir, photo):
    eng = RegionEngine.load(tiny_rgpt_dir, device="cpu")
    eng.model.config.image_aspect_ratio = "square"        # LLaVA's centre crop drops the sides of a wide photo
    eng.aspect = "square"
    with pytest.raises(InputError, match="region 1 .*lies entirely outside the processed image"):
        eng.prepare(photo, [("USER: <image>\n<region1> ASSISTANT:", regions(photo, "box:0,0,20,20"))], Sampling())


def test_streamed_text_holds_back_what_may_become_a_stop_string():
    class Tok:
        pieces = {1: "ab", 2: "#", 3: "c", 4: "\ufffd"}

        def decode(self, ids, skip_special_tokens=True):
            return "".join(self.pieces[i] for i in ids)
    row = ChoiceText(Tok(), ("##",))
    assert row.push(1, eos=0) == ("ab", None)
    assert row.push(2, eos=0) == ("", None)        # "#" may start "##"
    assert row.push(3, eos=0) == ("#c", None)      # it did not
    assert row.push(4, eos=0) == ("", None)        # an incomplete character waits
    row = ChoiceText(Tok(), ("##",))
    row.push(1, eos=0)
    row.push(2, eos=0)
    assert row.push(2, eos=0) == ("", "stop")      # "##": stopped, nothing of it sent
    row = ChoiceText(Tok(), ())
    row.push(1, eos=0)
    assert row.push(0, eos=0) == ("", "stop")      # EOS


def test_model_names_are_labels_of_the_path():
    assert model_name_of("/ckpt/rgpt-7b/") == "rgpt-7b"
    assert model_name_of("runs/x/checkpoint-500") == "x_checkpoint-500"
    assert isinstance(Delta(0, "a"), Delta)


def test_processed_images_are_found_by_content_and_the_oldest_leaves():
    """RegionEngine.prepare processes an image once while it is among the last few (a chat re-sends its image each
    turn): a copy with the same pixels is found, other pixels or another size are not, and the least recently used
    entry leaves first."""
    import torch
    from PIL import Image

    from rgpt_llava.serve.engine import ProcessedImages
    calls = []

    def process(image):
        calls.append(image.getpixel((0, 0)))
        return torch.tensor(len(calls))
    cache = ProcessedImages(capacity=2)
    red, blue = Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))
    first = cache.get(red, process)
    assert cache.get(red.copy(), process) is first and len(calls) == 1
    assert int(cache.get(blue, process)) == 2
    assert int(cache.get(Image.new("RGB", (4, 5), (255, 0, 0)), process)) == 3    # same colour, another size
    assert cache.get(blue, process) is not first and len(calls) == 3            # blue was still there
    assert int(cache.get(red, process)) == 4                                     # red had left (capacity 2)
