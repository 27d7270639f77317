"""Speech LM: layout round trip, constrained generation, overfitting, save/load, resume."""
from __future__ import annotations

import json

import pytest
import torch

from flexicodec.common.pretrained import CheckpointError
from flexicodec.lm.generate import SamplingConfig, VoicePrompt, generate, stream_tokens
from flexicodec.lm.layout import IGNORE, build_sequence, collate, parse_sequence
from flexicodec.lm.model import SpeechLM, SpeechLMConfig
from flexicodec.lm.train import TrainConfig, run_training
from flexicodec.lm.vocab import SPEECH_END, LMVocab, VocabError

torch.set_num_threads(1)

TINY = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
            num_text=40, semantic_size=32, max_group=8, max_positions=256)


def tiny_lm(seed: int = 0, **kw) -> SpeechLM:
    torch.manual_seed(seed)
    return SpeechLM(SpeechLMConfig(**{**TINY, **kw})).eval()


def synthetic_utts(n: int, seed: int = 0) -> list[tuple[list[int], list[int], list[int]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        t = int(torch.randint(3, 8, (1,), generator=g))
        m = int(torch.randint(4, 12, (1,), generator=g))
        out.append((torch.randint(0, 40, (t,), generator=g).tolist(),
                    torch.randint(0, 32, (m,), generator=g).tolist(),
                    torch.randint(1, 9, (m,), generator=g).tolist()))
    return out


def test_layout_round_trip():
    v = LMVocab(num_text=40, semantic_size=32, max_group=8)
    for text, codes, lens in synthetic_utts(10):
        it = build_sequence(v, text, 6.25, codes, lens)
        back = parse_sequence(v, it)
        assert back["text_pieces"].tolist() == text
        assert back["codes"].tolist() == codes
        assert back["lengths"].tolist() == lens
        assert back["frame_rate"] == 6.25
        # one position per token: the sequence is not longer than text + codes + 5
        assert len(it) == len(text) + len(codes) + 5
        # each semantic position carries its own length label; next input its embedding
        sem = (it.input_ids >= v.semantic_offset) & (it.input_ids < v.length_offset)
        assert (it.length_labels[sem] + 1).tolist() == lens
        assert (it.length_labels[~sem] == IGNORE).all()
    with pytest.raises(VocabError):
        build_sequence(v, [1], 12.5, [32], [1])       # code outside the FSQ size
    with pytest.raises(VocabError):
        build_sequence(v, [1], 12.5, [3], [9])        # length > max_group
    with pytest.raises(VocabError):
        build_sequence(v, [1], 12.5, [3, 4], [1])     # count mismatch
    assert v.rate_bucket(6.0) == v.frame_rates.index(6.25)


def test_generation_respects_constraints():
    m = tiny_lm()
    v = m.vocab
    s = SamplingConfig(temperature=1.5, top_k=20, top_p=0.95, repetition_penalty=1.3,
                       max_tokens=15, min_tokens=3, seed=1)
    res = generate(m, [[1, 2, 3], [4, 5], [6]], 8.33, s)
    assert len(res) == 3
    for r in res:
        assert r.semantic_codes.dtype == torch.long and r.token_lengths.dtype == torch.long
        assert r.semantic_codes.shape == r.token_lengths.shape
        assert 3 <= r.semantic_codes.numel() <= 15
        assert ((r.semantic_codes >= 0) & (r.semantic_codes < v.semantic_size)).all()
        assert ((r.token_lengths >= 1) & (r.token_lengths <= v.max_group)).all()
        assert r.truncated == (r.semantic_codes.numel() == 15 and r.truncated)
    # a hard stop: with </speech> made impossible to prefer, generation still ends
    with torch.no_grad():
        m.backbone.get_output_embeddings().bias = None
        m.backbone.get_output_embeddings().weight[SPEECH_END] = -10.0 * \
            m.backbone.get_output_embeddings().weight[SPEECH_END].sign()
    r = generate(m, [[1]], 12.5, SamplingConfig(greedy=True, max_tokens=7))[0]
    assert r.semantic_codes.numel() <= 7


def test_batched_left_padding_and_stream_match_single():
    m = tiny_lm(seed=3)
    g = SamplingConfig(greedy=True, max_tokens=12)
    texts = [[1, 2, 3, 4, 5, 6], [7], [8, 9]]
    batched = generate(m, texts, 6.25, g)
    for t, b in zip(texts, batched):
        single = generate(m, [t], 6.25, g)[0]
        assert single.semantic_codes.tolist() == b.semantic_codes.tolist()
        assert single.token_lengths.tolist() == b.token_lengths.tolist()
    streamed = list(stream_tokens(m, texts[0], 6.25, g))
    assert [c for c, _ in streamed] == batched[0].semantic_codes.tolist()
    assert [n for _, n in streamed] == batched[0].token_lengths.tolist()


def test_kv_cache_matches_full_forward():
    m = tiny_lm(seed=4)
    r = generate(m, [[3, 1, 4]], 5.0, SamplingConfig(greedy=True, max_tokens=10))[0]
    it = build_sequence(m.vocab, [3, 1, 4], 5.0, r.semantic_codes, r.token_lengths,
                        end=not r.truncated)
    b = collate([it])
    with torch.no_grad():
        out = m(b["input_ids"], b["length_in"], b["attention_mask"], b["position_ids"])
    s0 = 3 + 3 + 1
    n = r.semantic_codes.numel()
    allowed = m.vocab.speech_mask()
    pred = out.logits[0].masked_fill(~allowed, float("-inf")).argmax(-1)
    assert pred[s0 - 1:s0 - 1 + n].tolist() == (r.semantic_codes + m.vocab.semantic_offset).tolist()
    if not r.truncated:
        assert int(pred[s0 - 1 + n]) == SPEECH_END
    lens = out.length_logits[0].argmax(-1) + 1
    assert lens[s0:s0 + n].tolist() == r.token_lengths.tolist()


def _overfit(tmp_path, steps=150, **kw):
    utts = synthetic_utts(4, seed=7)
    m = tiny_lm(seed=0)
    items = [build_sequence(m.vocab, t, 6.25, c, n) for t, c, n in utts]
    cfg = TrainConfig(lr=3e-3, warmup_steps=10, max_steps=steps, batch_tokens=4096,
                      max_batch=8, log_every=10, eval_every=50, save_every=50, text_weight=0.1,
                      weight_decay=0.0, mixed_precision="no")
    res = run_training(m.train(), items, [1.0] * len(items), items, cfg, tmp_path / "run", **kw)
    return utts, res


def test_tiny_lm_overfits_and_reproduces_codes(tmp_path):
    utts, res = _overfit(tmp_path)
    m = res["model"].eval()
    logs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logs if "loss" in r]
    assert losses[-1] < 0.2 * losses[0]
    assert res["eval_semantic_loss"] < 0.1 and res["eval_length_loss"] < 0.1
    assert "tokens_per_s" in logs[0] and "audio_hours_per_gpu_minute" in logs[0]
    out = generate(m, [t for t, _, _ in utts], 6.25, SamplingConfig(greedy=True, max_tokens=30))
    for (t, c, n), r in zip(utts, out):
        assert r.semantic_codes.tolist() == c
        assert r.token_lengths.tolist() == n
        assert not r.truncated
    # voice prompting: prompt = first utterance, continue with the second's text
    t0, c0, n0 = utts[0]
    pr = VoicePrompt(t0, torch.tensor(c0[:3]), torch.tensor(n0[:3]))
    r = generate(m, [[]], 6.25, SamplingConfig(greedy=True, max_tokens=30), prompt=pr)[0]
    assert r.semantic_codes.numel() >= 1   # continues after the prompt's codes


def test_save_load_exact_and_codec_check(tmp_path):
    m = tiny_lm(seed=5, codec_identity="abc123")
    m.save_pretrained(tmp_path / "lm")
    files = [p for p in (tmp_path / "lm").rglob("*") if p.is_file()]
    assert all(p.stat().st_size <= 15 * 1024 * 1024 for p in files)
    m2 = SpeechLM.from_pretrained(tmp_path / "lm")
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    g = SamplingConfig(greedy=True, max_tokens=8)
    assert generate(m, [[1, 2]], 12.5, g)[0].semantic_codes.tolist() == \
        generate(m2, [[1, 2]], 12.5, g)[0].semantic_codes.tolist()

    class FakeCodec:
        semantic_vocab_size = 32
        max_group = 8
        identity = "abc123"
    SpeechLM.from_pretrained(tmp_path / "lm", codec=FakeCodec())
    FakeCodec.identity = "other"
    with pytest.raises(CheckpointError, match="identity"):
        SpeechLM.from_pretrained(tmp_path / "lm", codec=FakeCodec())
    FakeCodec.identity, FakeCodec.semantic_vocab_size = "abc123", 64
    with pytest.raises(CheckpointError, match="semantic codes"):
        SpeechLM.from_pretrained(tmp_path / "lm", codec=FakeCodec())
    with pytest.raises(CheckpointError):
        SpeechLM.from_pretrained(tmp_path / "nothing")


def test_resume_continues_to_same_weights(tmp_path):
    # straight run of 20 steps vs a run cut by its time budget after 1 step + resume
    _, full = _overfit(tmp_path / "a", steps=20)
    _, cut = _overfit(tmp_path / "b", steps=20, max_minutes=1e-9)
    assert cut["stopped"] == "time" and cut["step"] == 1
    ckpts = sorted((tmp_path / "b" / "run" / "checkpoints").glob("step_*"))
    assert ckpts and ckpts[-1].name == "step_00000001"
    _, resumed = _overfit(tmp_path / "b", steps=20, resume=True)
    assert resumed["step"] == 20
    for (k, a), (_, b) in zip(full["model"].state_dict().items(),
                              resumed["model"].state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_best_eval_weights_are_kept_and_reload(tmp_path):
    from flexicodec.lm.train import BEST_DIR, BestWeights, eval_objective, evaluate
    train = synthetic_utts(4, seed=7)
    held = synthetic_utts(4, seed=99)          # unrelated: the eval loss turns up as it overfits
    m = tiny_lm(seed=0)
    items = [build_sequence(m.vocab, t, 6.25, c, n) for t, c, n in train]
    valid = [build_sequence(m.vocab, t, 6.25, c, n) for t, c, n in held]
    cfg = TrainConfig(lr=3e-3, warmup_steps=10, max_steps=120, batch_tokens=4096, max_batch=8,
                      log_every=10, eval_every=10, save_every=60, weight_decay=0.0,
                      mixed_precision="no")
    res = run_training(m.train(), items, [1.0] * 4, valid, cfg, tmp_path / "run")
    logs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], eval_objective(r, cfg)) for r in logs if "eval_semantic_loss" in r]
    step, obj = min(evals, key=lambda e: e[1])
    assert res["best"]["step"] == step and res["best"]["objective"] == pytest.approx(obj)
    assert step < 120                       # it did overfit: the last step is not the best
    best = tiny_lm(seed=1)
    BestWeights(tmp_path / "run" / BEST_DIR).load_into(best)
    again = evaluate(best, valid, cfg, torch.device("cpu"))
    assert eval_objective(again, cfg) == pytest.approx(obj, rel=1e-5)
    # the record survives a restart (resume) and only a lower objective replaces it
    record = BestWeights(tmp_path / "run" / BEST_DIR)
    assert record.info()["step"] == step
    assert not record.offer(999, obj + 1.0, best, None)


def test_static_cache_and_compiled_steps_match_dynamic_cache():
    """StaticCache (fixed-shape steps) and its torch.compile'd steps give exactly the dynamic
    cache's tokens, greedy and sampled, batched with left padding; streaming agrees."""
    m = tiny_lm(seed=3)
    texts = [[1, 2, 3, 4, 5, 6], [7], [8, 9]]
    for kw in (dict(greedy=True), dict(temperature=1.2, top_k=10, repetition_penalty=1.2,
                                       seed=4)):
        ref = generate(m, texts, 6.25, SamplingConfig(max_tokens=12, **kw))
        for extra in (dict(static_cache=True),
                      dict(static_cache=True, compile=True, compile_backend="eager")):
            got = generate(m, texts, 6.25, SamplingConfig(max_tokens=12, **kw, **extra))
            for a, b in zip(ref, got):
                assert a.semantic_codes.tolist() == b.semantic_codes.tolist(), extra
                assert a.token_lengths.tolist() == b.token_lengths.tolist()
                assert a.truncated == b.truncated
    greedy = generate(m, texts[:1], 6.25, SamplingConfig(greedy=True, max_tokens=12))[0]
    s = SamplingConfig(greedy=True, max_tokens=12, static_cache=True)
    streamed = list(stream_tokens(m, texts[0], 6.25, s))
    assert [c for c, _ in streamed] == greedy.semantic_codes.tolist()
    assert [n for _, n in streamed] == greedy.token_lengths.tolist()
    with pytest.raises(ValueError, match="static_cache"):
        SamplingConfig(compile=True)


def test_compiled_steps_are_reused_across_prompt_lengths():
    """The StaticCache length is rounded up to a bucket, so prompts of other lengths reuse the
    compiled one-token step instead of compiling a new graph each; the named LM cache modes
    are valid SamplingConfigs that give the same tokens."""
    import torch._dynamo

    from flexicodec.lm.cache_modes import LM_CACHES, lm_cache_settings
    from flexicodec.lm.generate import STATIC_CACHE_BUCKET, static_cache_length

    assert static_cache_length(3, 12) == STATIC_CACHE_BUCKET
    assert static_cache_length(STATIC_CACHE_BUCKET - 12, 12) == 2 * STATIC_CACHE_BUCKET
    m = tiny_lm(seed=5)
    torch._dynamo.reset()
    s = SamplingConfig(greedy=True, max_tokens=12, static_cache=True, compile=True,
                       compile_backend="eager")
    generate(m, [[1, 2, 3]], 6.25, s)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for text in ([1, 2, 3, 4, 5, 6, 7], [9], [4, 5, 6, 7, 8, 9, 10, 11, 12]):
        generate(m, [text], 6.25, s)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames
    ref = generate(m, [[1, 2, 3]], 6.25, SamplingConfig(greedy=True, max_tokens=12))[0]
    for name in LM_CACHES:
        kw = lm_cache_settings(name)
        if kw["compile"]:
            kw.update(compile_backend="eager", compile_mode=None)   # CUDA graphs need CUDA
        got = generate(m, [[1, 2, 3]], 6.25, SamplingConfig(greedy=True, max_tokens=12, **kw))
        assert got[0].semantic_codes.tolist() == ref.semantic_codes.tolist(), name
    with pytest.raises(ValueError, match="unknown LM cache"):
        lm_cache_settings("fast")
