"""RGPT on vLLM's AsyncLLM (AsyncVLLMRegionEngine, what a server backend uses): concurrent requests each get the HF
engine's greedy answers, streamed in pieces that add up to them; stop strings and length limits end choices as
there. Needs the vllm stack (RGPT_STACK=vllm)."""
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: the vllm stack (RGPT_STACK=vllm) runs these tests")

import asyncio  # noqa: E402
import os  # noqa: E402

from PIL import Image  # noqa: E402

from rgpt_llava.serve.engine import RegionEngine, Sampling  # noqa: E402
from test_vllm import PROMPTS, regions, tiny_rgpt_for_vllm  # noqa: E402

GREEDY = Sampling(temperature=0, max_new_tokens=16)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_tokenizer_dir, tiny_clip_dir):
    return tiny_rgpt_for_vllm(tmp_path_factory.mktemp("vllm_async"), tiny_tokenizer_dir, tiny_clip_dir)


def test_concurrent_streamed_requests_equal_the_hf_engine(checkpoint, images_dir):
    from rgpt_llava.vllm.engine import AsyncVLLMRegionEngine
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    photo = Image.open(images_dir / "coffee.jpg").convert("RGB")
    requests = [[(prompt, regions(photo, n, 5 * k))] for k, (prompt, n) in enumerate(PROMPTS.values())]
    requests.append([(PROMPTS["one <region>"][0], regions(photo, 1, k)) for k in range(3)])   # several choices
    hf = RegionEngine.load(checkpoint, device="cpu")
    expected = [hf.answer(hf.prepare(photo, items, GREEDY)) for items in requests]
    stop = expected[0][0][2:5]
    stopped = hf.prepare(photo, requests[0], Sampling(temperature=0, max_new_tokens=16, stop=(stop,)))
    stop_deltas = [d for step in hf.generate(stopped, stream=False) for d in step]

    async def main():
        engine = AsyncVLLMRegionEngine.load(checkpoint)
        try:
            async def streamed(items, sampling=GREEDY):
                pieces = [d async for step in engine.agenerate(engine.prepare(photo, items, sampling)) for d in step]
                texts = [""] * len(items)
                for d in pieces:
                    texts[d.index] += d.text
                return texts, pieces
            results = await asyncio.gather(*(streamed(items) for items in requests))
            stop_text, stop_pieces = await streamed(requests[0], stopped.sampling)
            return results, stop_text, stop_pieces
        finally:
            engine.close()

    results, stop_text, stop_pieces = asyncio.run(main())
    assert [texts for texts, _ in results] == expected
    assert any(len(pieces) > len(texts) for texts, pieces in results), "answers came in one piece: not streamed"
    assert stop_text[0] == "".join(d.text for d in stop_deltas) == expected[0][0][:expected[0][0].find(stop)]
    assert stop_pieces[-1].finish_reason == stop_deltas[-1].finish_reason == "stop"
    assert stop_pieces[-1].completion_tokens == stop_deltas[-1].completion_tokens


def test_a_dead_engine_fails_requests_in_flight_and_new_and_says_so(checkpoint, images_dir):
    """vLLM's engine process killed mid-answer: the stream in flight and a new request raise EngineDeadError (a
    server's 503), and ``healthy`` turns False (its health endpoint)."""
    import psutil
    from vllm.v1.engine.exceptions import EngineDeadError

    from rgpt_llava.vllm.engine import AsyncVLLMRegionEngine
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    photo = Image.open(images_dir / "coffee.jpg").convert("RGB")
    prompt, n = PROMPTS["one <region>"]
    long_answer = Sampling(temperature=0, max_new_tokens=900, ignore_eos=True)

    async def main():
        engine = AsyncVLLMRegionEngine.load(checkpoint)
        try:
            assert engine.healthy
            job = engine.prepare(photo, [(prompt, regions(photo, n))], long_answer)
            stream = engine.agenerate(job)
            first = await stream.__anext__()
            # the processes vLLM started for this test (its engine core and workers), and only those
            engine_processes = [p for p in psutil.Process().children(recursive=True)
                                if "resource_tracker" not in " ".join(p.cmdline())]
            assert engine_processes
            for p in engine_processes:
                p.kill()
            with pytest.raises(EngineDeadError):
                async for _ in stream:
                    pass
            assert not engine.healthy
            with pytest.raises(EngineDeadError):
                await engine.aanswer(job)
            return first
        finally:
            engine.close()

    first = asyncio.run(main())
    assert first and first[0].finish_reason is None     # it was killed in flight, not after the answer
