"""The inference engine on the tiny profile: exactness against transformers, continuous batching,
per-request sampling, limits and failures."""

from __future__ import annotations

import copy
import dataclasses
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from emola.engine import (PUBLISHED_GENERATION, EngineStopped, GenerationRequest, InferenceEngine, Listener,
                          PromptTooLong)
from emola.engine.sampling import next_tokens, top_p_keep, uniform_noise
from tests.conftest import build_tiny

QUESTIONS = ["What emotions are conveyed by this face?", "What AUs are conveyed by this face?", "Q?",
             "A much longer question than the others, with more words in it?"]


@pytest.fixture(scope="module")
def lora_model(tiny_params, tiny_corpus):
    """A tiny EmoLA with LoRA (unmerged) whose trainable weights are away from their initial values."""
    model, processor, _ = build_tiny(tiny_params, tiny_corpus)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval(), processor


#: The decoders: the slot decoder (the tiny profile's), the packed decoder with the decode rows attending as
#: the slot decoder's do, and with every row through the variable-length kernel (the reference on CPU).
MODES = {"slot": {}, "packed": {"packed_prefill": True}, "varlen": {"packed_prefill": True, "decode_attention": "varlen"}}
ATTENTIONS = list(MODES)


def _engine(lora_model, tiny_params, **inference) -> InferenceEngine:
    model, processor = lora_model
    cfg = tiny_params.inference.model_copy(update={"device": "cpu", **inference})
    tok = processor.tokenizer
    return InferenceEngine(copy.deepcopy(model), cfg, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                           processor=processor)


def _media(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 255, (96, 96 + 8 * i, 3), np.uint8)) for i in range(n)]
    return images, rng.normal(size=(n, 136)).astype(np.float32)


def _greedy(tokens: int):
    return PUBLISHED_GENERATION.model_copy(update={"temperature": 0.0, "max_new_tokens": tokens})


def test_prefill_and_decode_logits_equal_transformers_forward(lora_model, tiny_params):
    model, processor = lora_model
    engine = _engine(lora_model, tiny_params)
    images, priors = _media(2)
    requests = engine.requests(QUESTIONS[:2], images, priors, _greedy(4))
    batch = processor.generation_batch(QUESTIONS[:2], images, priors)
    for i, request in enumerate(requests):   # transformers' forward of the unmerged model, one prompt at a time
        ids = torch.tensor([request.prompt_ids])
        with torch.no_grad():
            reference = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                              pixel_values=batch["pixel_values"][i:i + 1], prior=batch["prior"][i:i + 1]).logits[0]
            embeds = engine.model.merge_inputs(ids, batch["pixel_values"][i:i + 1], batch["prior"][i:i + 1])
            prefill = engine.decoder.prefill(embeds, torch.tensor([ids.shape[1]]), torch.tensor([i]))
        torch.testing.assert_close(prefill[0], reference[-1], atol=1e-4, rtol=1e-4)
    # A decode step at the next position: the same as transformers over the longer sequence.
    token = int(prefill[0].argmax())
    engine.decoder.tokens[:2] = torch.tensor([0, token])
    engine.decoder.positions[:2] = torch.tensor([0, len(requests[1].prompt_ids)])
    decoded = engine.decoder.decode(2, len(requests[1].prompt_ids) + 1)[1]
    ids = torch.tensor([requests[1].prompt_ids + [token]])
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=batch["pixel_values"][1:2],
                          prior=batch["prior"][1:2]).logits[0, -1]
    torch.testing.assert_close(decoded, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_merged_and_unmerged_greedy_outputs_are_identical(lora_model, tiny_params, attention):
    """transformers' generate with LoRA unmerged (the old path), the engine merged and unmerged: token for token."""
    model, processor = lora_model
    images, priors = _media(4)
    tok = processor.tokenizer
    reference = []
    for i, question in enumerate(QUESTIONS):
        batch = processor.generation_batch([question], images[i:i + 1], priors[i:i + 1])
        ids = model.generate(**batch, max_new_tokens=16, do_sample=False, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id)[0].tolist()
        reference.append(ids[: ids.index(tok.eos_token_id) + 1] if tok.eos_token_id in ids else ids)
    for merge in (True, False):
        engine = _engine(lora_model, tiny_params, merge_lora=merge, **MODES[attention])
        got = [g.token_ids for g in engine.generate(engine.requests(QUESTIONS, images, priors, _greedy(16)))]
        assert got == reference, f"merge_lora={merge}"
    assert not any(hasattr(m, "lora_A") for m in _engine(lora_model, tiny_params, **MODES[attention]).model.modules())   # merged


def test_batched_requests_equal_each_served_alone_through_few_slots(lora_model, tiny_params):
    """Seven requests of different lengths through three slots: slots are freed, refilled and compacted."""
    engine = _engine(lora_model, tiny_params, max_batch=3, max_prefill_tokens=200)
    images, priors = _media(7, seed=1)
    questions = [QUESTIONS[i % 4] for i in range(7)]
    requests = engine.requests(questions, images, priors, _greedy(12))
    for r, n in zip(requests, (3, 12, 5, 1, 9, 12, 7)):
        r.max_new_tokens, r.stop_at_eos = n, False
    together = engine.generate(requests)
    assert [len(g.token_ids) for g in together] == [3, 12, 5, 1, 9, 12, 7]
    assert max(g.batch_size for g in together) == 3 and engine.prefills > 1
    alone = [engine.generate([r])[0].token_ids for r in requests]
    assert [g.token_ids for g in together] == alone


def test_padded_prefill_equals_prefill_at_each_prompts_own_length(lora_model, tiny_params):
    """prefill_bucket pads prompts to fixed widths and groups to row buckets (the shapes CUDA graphs replay):
    the padding rows go to the scratch slot and every request's tokens stay the same."""
    images, priors = _media(7, seed=2)
    questions = [QUESTIONS[i % 4] for i in range(7)]
    outputs = {}
    for bucket in (None, 16):
        engine = _engine(lora_model, tiny_params, max_batch=3, max_prefill_tokens=400, prefill_bucket=bucket)
        assert engine.decoder.k_cache.shape[1] == (3 if bucket is None else 4)   # + the scratch slot
        requests = engine.requests(questions, images, priors, _greedy(10))
        for r, n in zip(requests, (4, 10, 6, 2, 9, 10, 7)):
            r.max_new_tokens, r.stop_at_eos = n, False
        outputs[bucket] = [g.token_ids for g in engine.generate(requests)]
        # A group of three is padded to four rows, each prompt to a multiple of 16 tokens: the same logits.
        ids = [r.prompt_ids for r in requests[:3]]
        width = max(map(len, ids))
        padded = torch.full((3, width), engine.pad_token_id)
        for i, row in enumerate(ids):
            padded[i, :len(row)] = torch.tensor(row)
        with torch.no_grad():
            embeds = engine.model.merge_inputs(padded, torch.stack([r.pixel_values for r in requests[:3]]),
                                               torch.tensor(np.stack([r.prior for r in requests[:3]])))
            outputs[(bucket, "logits")] = engine.decoder.prefill(embeds, torch.tensor(list(map(len, ids))),
                                                                 torch.arange(3))
    assert outputs[None] == outputs[16]
    torch.testing.assert_close(outputs[(16, "logits")], outputs[(None, "logits")], atol=1e-5, rtol=1e-5)


class _Recorder(Listener):
    def __init__(self, name: str, log: list):
        self.name, self.log, self.tokens = name, log, []
        self.done = threading.Event()
        self.result = self.error = None

    def on_token(self, token_id):
        self.tokens.append(token_id)

    def on_finish(self, result, error):
        self.result, self.error = result, error
        self.log.append(self.name)
        self.done.set()


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_a_short_request_joins_a_running_batch_and_finishes_first(lora_model, tiny_params, attention):
    engine = _engine(lora_model, tiny_params, **MODES[attention]).start()
    try:
        images, priors = _media(2, seed=2)
        long, short = engine.requests(QUESTIONS[:2], images, priors, _greedy(400))
        long.stop_at_eos, short.max_new_tokens, short.stop_at_eos = False, 4, False
        order: list[str] = []
        slow, quick = _Recorder("long", order), _Recorder("short", order)
        engine.submit(long, slow)
        deadline = time.time() + 30
        while len(slow.tokens) < 5 and time.time() < deadline:
            time.sleep(0.001)
        assert 5 <= len(slow.tokens) < 400, "the long request should be generating"
        engine.submit(short, quick)
        assert quick.done.wait(30) and slow.done.wait(60)
    finally:
        engine.stop()
    assert order == ["short", "long"]
    assert quick.result.batch_size == 2 and quick.tokens == quick.result.token_ids   # streamed as generated
    assert quick.result.token_ids == engine.generate([short])[0].token_ids
    assert slow.result.token_ids == engine.generate([long])[0].token_ids


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_sampling_depends_only_on_the_request_and_its_seed(lora_model, tiny_params, attention):
    engine = _engine(lora_model, tiny_params, **MODES[attention])
    images, priors = _media(4, seed=3)
    hot = PUBLISHED_GENERATION.model_copy(update={"temperature": 1.5, "top_p": 0.95, "max_new_tokens": 12})
    requests = engine.requests(QUESTIONS, images, priors, hot, seed=11)
    together = [g.token_ids for g in engine.generate(requests)]
    assert together == [engine.generate([r])[0].token_ids for r in reversed(requests)][::-1]
    reseeded = [g.token_ids for g in engine.generate(engine.requests(QUESTIONS, images, priors, hot, seed=12))]
    assert reseeded != together
    greedy = [g.token_ids for g in engine.generate(engine.requests(QUESTIONS, images, priors, _greedy(12)))]
    assert greedy != together   # temperature 1.5 does sample


def test_top_p_keeps_the_fewest_tokens_that_reach_the_mass():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.9, 0.03, 0.02]])
    keep = top_p_keep(probs, torch.tensor([0.7, 0.5]))
    assert keep.tolist() == [[True, True, False, False], [False, True, False, False]]
    noise = uniform_noise(torch.tensor([1, 1, 2]), torch.tensor([0, 1, 0]), 1000)
    assert noise.shape == (3, 1000) and float(noise.min()) > 0 and float(noise.max()) < 1
    assert abs(float(noise.mean()) - 0.5) < 0.03 and not torch.equal(noise[0], noise[1])
    torch.testing.assert_close(uniform_noise(torch.tensor([1]), torch.tensor([0]), 1000)[0], noise[0])
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0]])
    chosen = next_tokens(logits, torch.tensor([0.0, 0.01]), torch.tensor([1.0, 0.5]), torch.tensor([0, 0]),
                         torch.tensor([0, 0]))
    assert chosen.tolist() == [1, 0]


def test_a_prompt_longer_than_the_context_is_refused_at_once(lora_model, tiny_params):
    engine = _engine(lora_model, tiny_params)
    images, priors = _media(1)
    started = time.perf_counter()
    request = engine.requests(["why " * 50_000], images, priors, _greedy(16))[0]
    with pytest.raises(PromptTooLong, match=r"exceeds the model's context of 2048 tokens"):
        engine.validate(request)
    assert time.perf_counter() - started < 1.0
    fits = engine.requests(["Q?"], images, priors, _greedy(2048))[0]
    with pytest.raises(PromptTooLong, match=r"2048 new tokens were asked for"):
        engine.generate([fits])


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_completions_say_why_they_stopped_and_count_tokens(lora_model, tiny_params, attention):
    engine = _engine(lora_model, tiny_params, **MODES[attention])
    tok = engine.processor.tokenizer
    calls = []

    def first_call_ends_row_zero(_module, _inputs, logits):
        calls.append(1)
        if len(calls) == 1:   # the prefill: the first request can only say </s>
            logits = logits.clone()
            logits[0, tok.eos_token_id] = 1e4
        return logits

    hook = engine.decoder.lm_head.register_forward_hook(first_call_ends_row_zero)
    try:
        images, priors = _media(2)
        completions = engine.complete(QUESTIONS[2:0:-1], images, priors, _greedy(5))
    finally:
        hook.remove()
    stopped, cut = completions   # "Q?" is the shorter prompt: admitted first, row 0
    assert (stopped.finish_reason, stopped.completion_tokens, stopped.text) == ("stop", 1, "")
    assert (cut.finish_reason, cut.completion_tokens) == ("length", 5)
    assert [c.prompt_tokens for c in completions] == [len(engine.processor.prompt_ids(q)) for q in QUESTIONS[2:0:-1]]


def test_published_decoding_is_repeatable(lora_model, tiny_params):
    engine = _engine(lora_model, tiny_params)
    assert (PUBLISHED_GENERATION.temperature, PUBLISHED_GENERATION.top_p) == (0.01, 0.5)
    images, priors = _media(3)
    generation = PUBLISHED_GENERATION.model_copy(update={"max_new_tokens": 6})
    texts = [c.text for c in engine.complete(QUESTIONS[:3], images, priors, generation)]
    assert texts == [c.text for c in engine.complete(QUESTIONS[:3], images, priors, generation)]


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_a_cancelled_request_stops_and_a_failing_one_fails_alone(lora_model, tiny_params, attention):
    engine = _engine(lora_model, tiny_params, **MODES[attention]).start()
    try:
        images, priors = _media(3, seed=4)
        requests = engine.requests(QUESTIONS[:3], images, priors, _greedy(300))
        for r in requests:
            r.stop_at_eos = False
        log: list[str] = []
        cancelled, fine = _Recorder("cancelled", log), _Recorder("fine", log)
        engine.submit(requests[0], cancelled)
        while len(cancelled.tokens) < 3:
            time.sleep(0.001)
        cancelled.cancelled = True
        assert cancelled.done.wait(10) and cancelled.result.finish_reason == "cancelled"
        assert len(cancelled.result.token_ids) < 300
        broken = copy.copy(requests[1])
        broken.prior = np.zeros(7, np.float32)   # the wrong length: refused before it is queued
        with pytest.raises(ValueError, match=r"prior: .* needs a vector of 136 values, got \(7,\)"):
            engine.submit(broken, _Recorder("bad", log))
        engine.submit(requests[2], fine)
        assert fine.done.wait(60) and fine.error is None and len(fine.result.token_ids) == 300
    finally:
        engine.stop()
    with pytest.raises(EngineStopped, match="not running"):
        engine.submit(requests[2], _Recorder("late", []))


def test_vision_or_prior_switched_off_runs_too(tiny_params, tiny_corpus):
    model, processor, _ = build_tiny(tiny_params, tiny_corpus, vision="none")
    tok = processor.tokenizer
    engine = InferenceEngine(model.eval(), tiny_params.inference.model_copy(update={"device": "cpu"}),
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, processor=processor)
    _, priors = _media(2)
    out = engine.complete(QUESTIONS[:2], None, priors, _greedy(4))
    assert len(out) == 2 and all(c.completion_tokens <= 4 for c in out)
    assert GenerationRequest(prompt_ids=[1]).max_new_tokens == 512


def test_readout_gives_the_heads_probabilities_in_one_pass_whatever_the_question(lora_model, tiny_params):
    from emola.model.readout import ReadoutHead

    model, processor = lora_model
    with_head = copy.deepcopy(model)
    torch.manual_seed(4)
    with_head.readout = ReadoutHead(with_head.base_llava.config.text_config.hidden_size)
    reference_model = copy.deepcopy(with_head)   # LoRA unmerged: the engine's merged weights must agree
    tok = processor.tokenizer
    engine = InferenceEngine(with_head, tiny_params.inference.model_copy(update={"device": "cpu", "max_batch": 3}),
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, processor=processor)
    images, priors = _media(5, seed=3)
    requests = engine.requests(QUESTIONS + ["Q?"], images, priors, _greedy(4))
    readouts = engine.readout(requests)   # two groups: 3 + 2
    assert len(readouts) == 5
    for i, (request, readout) in enumerate(zip(requests, readouts)):
        batch = processor.generation_batch([QUESTIONS[0]], images[i:i + 1], priors[i:i + 1])
        aus, emotions = reference_model.eval().readout_probabilities(**batch)
        np.testing.assert_allclose(list(readout.aus.values()), aus[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(list(readout.emotions.values()), emotions[0].numpy(), atol=1e-5)
        assert abs(sum(readout.emotions.values()) - 1) < 1e-5 and readout.emotion in readout.emotions
    with pytest.raises(ValueError, match="no readout head"):
        _engine(lora_model, tiny_params).readout(requests[:1])


# ------------------------------------------------------------------ the packed decoder
def test_packed_decoder_gives_the_slot_decoders_tokens_through_few_slots(lora_model, tiny_params):
    """packed_prefill: arrivals' prompts and running rows in one pass (the decode rows attending as the slot
    decoder's, or each over its own length: the reference kernel on CPU): the same greedy tokens as the slot
    decoder, with slots refilled and compacted."""
    images, priors = _media(7, seed=4)
    questions = [QUESTIONS[i % 4] for i in range(7)]
    outputs = {}
    for attention in MODES:
        engine = _engine(lora_model, tiny_params, max_batch=3, max_prefill_tokens=400, **MODES[attention])
        assert engine.packed == (attention != "slot")
        requests = engine.requests(questions, images, priors, _greedy(10))
        for r, n in zip(requests, (4, 10, 6, 2, 9, 10, 7)):
            r.max_new_tokens, r.stop_at_eos = n, False
        outputs[attention] = [g.token_ids for g in engine.generate(requests)]
        if engine.packed:
            assert engine.prefills > 1 and engine.decoder.k_cache.shape[1] == 4   # + the scratch row
    assert outputs["varlen"] == outputs["slot"] and outputs["packed"] == outputs["slot"]


def test_an_fp8_cache_is_read_rounded_and_keeps_the_logits_close(lora_model, tiny_params):
    """kv_cache_dtype float8_e4m3fn: the cache holds one byte per entry; a prompt's pass (which attends over its
    own keys) gives the model-dtype cache's logits exactly, a later step's differ only by the rounding."""
    exact = _engine(lora_model, tiny_params, **MODES["varlen"])
    rounded = _engine(lora_model, tiny_params, **MODES["varlen"], kv_cache_dtype="float8_e4m3fn")
    assert rounded.decoder.k_cache.dtype == torch.float8_e4m3fn and rounded.decoder.k_cache.element_size() == 1
    images, priors = _media(2, seed=5)
    request = exact.requests(QUESTIONS[:2], images, priors, _greedy(4))
    with torch.no_grad():
        prompts = [e[:n] for e, n in zip(*exact._prompt_embeds([(r, None) for r in request]))]
        logits = {}
        for name, engine in (("exact", exact), ("rounded", rounded)):
            first = engine.decoder.step([], [], prompts)
            tokens = first.argmax(-1).tolist()
            second = engine.decoder.step(tokens, [len(p) for p in prompts], [])
            logits[name] = (first, second)
    torch.testing.assert_close(logits["rounded"][0], logits["exact"][0])
    difference = (logits["rounded"][1] - logits["exact"][1]).abs().max()
    assert 0 < difference < 0.05 * logits["exact"][1].abs().max()
    outputs = rounded.generate(rounded.requests(QUESTIONS, *_media(4), _greedy(8)))
    assert all(len(g.token_ids) >= 1 for g in outputs)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_a_request_whose_inputs_fail_to_embed_fails_alone(lora_model, tiny_params, attention):
    """Arrivals are embedded together; when that fails, one by one: the culprit hears the error, the others
    are answered as if nothing happened."""
    engine = _engine(lora_model, tiny_params, **MODES[attention])
    images, priors = _media(3, seed=5)
    requests = engine.requests(QUESTIONS[:3], images, priors, _greedy(5))
    alone = [engine.generate([r])[0].token_ids for r in requests]
    culprit = requests[1]
    embed = engine._prompt_embeds

    def failing(group):
        if any(request is culprit for request, _ in group):
            raise RuntimeError("broken image")
        return embed(group)

    engine._prompt_embeds = failing
    log: list[str] = []
    recorders = [_Recorder(str(i), log) for i in range(3)]
    engine._waiting.extend(zip(requests, recorders))
    while engine.busy:
        engine._step(engine._admissible())
    assert isinstance(recorders[1].error, RuntimeError) and recorders[1].result is None
    assert [recorders[i].result.token_ids for i in (0, 2)] == [alone[0], alone[2]]


# ------------------------------------------------------------ overlapped steps
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_overlapped_steps_give_the_tokens_of_steps_read_one_at_a_time(lora_model, tiny_params, attention):
    """overlap_steps launches a step before the last one's tokens are read: requests that end on their end
    token, on their length, after one token, sampled or greedy, through few slots, get the same tokens."""
    images, priors = _media(8, seed=6)
    questions = [QUESTIONS[i % 4] for i in range(8)]
    hot = PUBLISHED_GENERATION.model_copy(update={"temperature": 1.2, "top_p": 0.9, "max_new_tokens": 14})
    outputs = {}
    for overlap in (False, True):
        engine = _engine(lora_model, tiny_params, max_batch=3, max_prefill_tokens=400, overlap_steps=overlap,
                         **MODES[attention])
        assert engine.overlap == overlap
        requests = engine.requests(questions, images, priors, _greedy(40))
        requests[5:] = engine.requests(questions[5:], images[5:], priors[5:], hot, seed=5)
        for r, n in zip(requests, (40, 1, 12, 40, 3, 14, 1, 9)):
            r.max_new_tokens = n
        requests[2].stop_at_eos = requests[7].stop_at_eos = False
        eos = engine.eos_token_id

        def sometimes_the_end(_module, _inputs, logits):   # a rule of each row's own logits: the same in both
            return logits + 1e4 * (logits.argmax(-1, keepdim=True) % 6 == 0) * (torch.arange(logits.shape[-1]) == eos)

        hook = engine.decoder.lm_head.register_forward_hook(sometimes_the_end)
        try:
            generated = engine.generate(requests)
        finally:
            hook.remove()
        outputs[overlap] = [(g.token_ids, g.finish_reason) for g in generated]
        assert not engine.busy and engine.load == {"waiting": 0, "running": 0}
    assert outputs[True] == outputs[False]
    reasons = [reason for _, reason in outputs[True]]
    assert "stop" in reasons and "length" in reasons   # both ends are exercised
    assert [len(ids) for ids, _ in outputs[True]][1::5] == [1, 1]


def test_an_overlapped_step_is_launched_before_the_last_steps_tokens_are_handed_out(lora_model, tiny_params):
    """The order that lets the device work while the host reads: with overlap_steps, when a listener hears a
    request's k-th token the model has already been asked for its (k+1)-th."""
    heard: dict[bool, list[tuple[int, int]]] = {}
    for overlap in (False, True):
        engine = _engine(lora_model, tiny_params, overlap_steps=overlap)
        passes = []
        hook = engine.decoder.lm_head.register_forward_hook(lambda *_: passes.append(1))

        class Count(_Recorder):
            def on_token(self, token_id):
                super().on_token(token_id)
                heard[overlap].append((len(self.tokens), len(passes)))

        heard[overlap] = []
        request = engine.requests(QUESTIONS[:1], *_media(1), _greedy(6))[0]
        request.stop_at_eos = False
        engine._waiting.append((request, Count("one", [])))
        try:
            while engine.busy:
                engine._step(engine._admissible())
        finally:
            hook.remove()
    # Read one at a time, the k-th token (k > 1: the first comes from the prefill's pass, the second from the
    # decode pass launched with it) is heard right after its own pass; overlapped, one pass later, but for the
    # last: a request with nothing left to generate is not launched again.
    assert heard[False] == [(1, 2)] + [(k, k) for k in range(2, 7)]
    assert heard[True] == [(1, 3)] + [(k, k + 1) for k in range(2, 6)] + [(6, 6)]


def test_branchless_sampling_chooses_the_same_tokens_without_asking_the_device():
    """The draw every row goes through (no host synchronisation) against the one that branches on which rows
    sample and which need the top-p sort: the same tokens, greedy, near-greedy and hot rows mixed."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 500, generator=generator) * 3
    logits[::5, 7] += 30   # rows whose top token alone holds the top-p mass
    temperature = torch.tensor([0.0, 0.01, 0.7, 1.5] * 16)
    top_p = torch.tensor([1.0, 0.5, 0.9, 0.95, 0.3, 1.0, 0.8, 0.5] * 8)
    seeds, steps = torch.arange(64) * 7, torch.arange(64) % 5
    branched = next_tokens(logits, temperature, top_p, seeds, steps)
    branchless = next_tokens(logits, temperature, top_p, seeds, steps, branchless=True)
    assert torch.equal(branched, branchless)
    assert not torch.equal(branched, logits.argmax(-1))   # some rows do sample


def test_media_that_do_not_match_the_prompts_tokens_are_refused(lora_model, tiny_params):
    """The engine merges images and priors by counts taken on the host: a request whose media and
    placeholder tokens disagree is refused before it is queued, naming the problem."""
    engine = _engine(lora_model, tiny_params)
    request = engine.requests(QUESTIONS[:1], *_media(1), _greedy(4))[0]
    ids, image, prior = request.prompt_ids, engine.model.image_token_id, engine.model.prior_token_id
    one_image_fewer = list(ids)
    one_image_fewer.remove(image)
    cases = {
        r"prompt_ids: 2 <prior> tokens": dict(prompt_ids=ids + [prior]),
        r"prompt_ids: \d+ <image> tokens; one image fills \d+": dict(prompt_ids=one_image_fewer),
        r"pixel_values: given, but the prompt has no <image> tokens": dict(prompt_ids=[i for i in ids if i != image]),
        r"prior: given, but the prompt has no <prior> token": dict(prompt_ids=[i for i in ids if i != prior]),
    }
    for message, change in cases.items():
        with pytest.raises(ValueError, match=message):
            engine.validate(dataclasses.replace(request, **change))
    engine.validate(request)


@pytest.mark.parametrize("overlap", [False, True])
def test_a_failing_step_in_generate_leaves_the_engine_clean_for_the_next_call(lora_model, tiny_params, overlap):
    engine = _engine(lora_model, tiny_params, overlap_steps=overlap)
    requests = engine.requests(QUESTIONS, *_media(4, seed=7), _greedy(6))
    calls = []

    def third_pass_fails(*_):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("device lost")

    hook = engine.decoder.lm_head.register_forward_hook(third_pass_fails)
    with pytest.raises(RuntimeError, match="device lost"):
        engine.generate(requests)
    hook.remove()
    assert not engine.busy
    assert [g.token_ids for g in engine.generate(requests)] == [g.token_ids for g in
                                                                 _engine(lora_model, tiny_params).generate(requests)]
