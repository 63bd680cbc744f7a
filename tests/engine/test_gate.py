"""The teacher-forced gate on the CPU: every decoder path agrees with the float32 reference, and a path made
wrong on purpose fails it."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from emola.engine import InferenceEngine
from emola.engine.gate import SAME_DTYPE, calibrate, float32_reference, reference_logprobs, teacher_forced
from tests.engine.test_engine import MODES, QUESTIONS, _greedy, _media, lora_model  # noqa: F401 - a fixture


@pytest.fixture(scope="module")
def merged(lora_model):
    """test_engine's tiny EmoLA (LoRA weights moved off their start), merged; its processor."""
    model, processor = lora_model
    model = copy.deepcopy(model)
    model.llava = model.llava.merge_and_unload()
    return model.eval(), processor


def _engine(merged, tiny_params, **inference) -> InferenceEngine:
    model, processor = merged
    cfg = tiny_params.inference.model_copy(update={"device": "cpu", "max_batch": 8, **inference})
    tok = processor.tokenizer
    return InferenceEngine(copy.deepcopy(model), cfg, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                           processor=processor)


@pytest.fixture(scope="module")
def forced(merged, tiny_params):
    """Ten requests of mixed prompt and answer lengths, each with a random answer to force, and the float32
    reference's log-probabilities of every answer position."""
    model, processor = merged
    engine = _engine(merged, tiny_params)
    images, priors = _media(10, seed=4)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(10)]
    requests = engine.requests(questions, images, priors, _greedy(1))
    rng = np.random.default_rng(0)
    vocab = model.base_llava.config.text_config.vocab_size
    eos = processor.tokenizer.eos_token_id
    for i, request in enumerate(requests):
        answer = [int(t) for t in rng.integers(3, vocab, 3 + 4 * i) if int(t) != eos]
        request.forced_ids, request.max_new_tokens, request.stop_at_eos = answer, len(answer), False
    references = reference_logprobs(float32_reference(model), requests)
    return requests, references


def _fresh(requests):
    return [copy.copy(r) for r in requests]


@pytest.mark.parametrize("mode", list(MODES))
def test_every_decoder_path_agrees_with_the_float32_reference_at_every_answer_position(merged, tiny_params, forced,
                                                                                        mode):
    requests, references = forced
    native = calibrate(merged[0], requests, references)
    bound = SAME_DTYPE.bound(native)
    engine = _engine(merged, tiny_params, **MODES[mode])
    checks = []
    for overlap in (True, False):
        engine.overlap = overlap
        for n in (1, 4, 10):   # one request alone, a few, all (the batch shrinks as answers end: every width)
            checks.append(teacher_forced(engine, _fresh(requests[:n]), references[:n], f"{mode} overlap={overlap} {n}",
                                         bound))
    checks.append(teacher_forced(engine, _fresh(requests), references, f"{mode} 3 in flight", bound, in_flight=3))
    for check in checks:
        assert check.passed, check.line()
        assert check.agreement == 1.0 and check.max_logprob_diff < 1e-3, check.line()
    assert checks[-1].positions == sum(len(r) for r in references)


def test_the_gate_fails_a_decode_path_that_is_wrong_at_one_batch_width(merged, tiny_params, forced, monkeypatch):
    """Decode rows through the variable-length path, 2% off when a step is four rows wide: the gate catches it;
    one request alone (one row wide) still passes."""
    from emola.engine import packed

    honest = packed.decode_attention_reference

    def off_at_four_rows(q, *args):
        out = honest(q, *args)
        return out * 1.02 if q.shape[0] == 4 else out

    monkeypatch.setattr(packed, "decode_attention_reference", off_at_four_rows)
    requests, references = forced
    engine = _engine(merged, tiny_params, **MODES["varlen"])
    alone = teacher_forced(engine, _fresh(requests[:1]), references[:1], "varlen alone", SAME_DTYPE.floor)
    assert alone.passed, alone.line()
    # Ten requests through eight slots: steps 8, 4, 2 and 1 rows wide as answers end.
    mixed = teacher_forced(engine, _fresh(requests[:10]), references[:10], "varlen, all", SAME_DTYPE.floor)
    assert not mixed.passed and mixed.max_logprob_diff > 10 * SAME_DTYPE.floor, mixed.line()


def test_greedy_answers_are_close_when_identical_or_parting_between_each_others_top_tokens():
    from emola.engine.gate import greedy_close

    top = [[5, 6, 7]] * 4
    assert greedy_close([5, 5, 5], top, [5, 5, 5], top) == (True, 3)
    assert greedy_close([5, 6, 9], top, [5, 7, 1], top) == (True, 1)     # 6 and 7: each in the other's best
    assert greedy_close([5, 9], top, [5, 7], top) == (False, 1)          # 9 is not among the other's best


def test_the_top_tokens_probe_keeps_each_answer_positions_best_ids(merged, tiny_params, forced):
    from emola.engine.gate import TopTokens

    requests, references = forced
    engine = _engine(merged, tiny_params, **MODES["varlen"])
    engine.logits_probe = top = TopTokens(3)
    chosen = [g.token_ids for g in engine.generate(_fresh(requests[:3]))]
    engine.logits_probe = None
    assert [len(top.of(r)) for r in requests[:3]] == [0, 0, 0]   # copies were run, not these objects
    fresh = _fresh(requests[:3])
    engine.logits_probe = top = TopTokens(3)
    engine.generate(fresh)
    for request, reference in zip(fresh, references):
        best = top.of(request)
        assert len(best) == len(reference)
        assert [b[0] for b in best] == reference.argmax(-1).tolist()   # float32: the reference's own best
    assert chosen
