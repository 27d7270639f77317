from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from flexicodec.data.cli import main as data_main
from flexicodec.data.corpus import (LEGACY, CorpusConfig, build_corpus, iter_plan, read_metadata,
                                    resolve_speakers, sentence_split, summarize)
from flexicodec.data.text import load_sentences, normalize_text

torch.set_num_threads(1)
KEYS = {"id", "audio", "text", "normalized_text", "phonemes", "speaker", "engine", "duration",
        "split", "n_sentences", "sentences", "pace", "pauses", "level_db", "base_speaker",
        "variant", "voice_language"}
FLITE = ("flite_slt", "flite_kal", "flite_rms")


def _legacy(**kw) -> CorpusConfig:
    return CorpusConfig(**kw, **{k: v for k, v in LEGACY.items()})


@pytest.fixture(scope="module")
def styled_corpus(tmp_path_factory):
    """~40 s built with the default item settings (joined sentences, pace, pauses, levels)
    from the tiny corpus' voices."""
    from conftest import TINY_SPEAKERS
    cfg = CorpusConfig(hours=40 / 3600, seed=0, speakers=TINY_SPEAKERS, batch_size=2)
    _have(cfg)
    out = tmp_path_factory.mktemp("styled_corpus")
    build_corpus(out, cfg, workers=2, progress=False)
    return out


def _have(cfg: CorpusConfig) -> None:
    try:
        resolve_speakers(cfg)
    except ValueError:
        pytest.skip("synthesizer voices not installed")


@pytest.mark.parametrize("corpus", ["tiny_corpus", "styled_corpus"])
def test_corpus_schema(corpus, request):
    root = request.getfixturevalue(corpus)
    rows = read_metadata(root)
    assert rows and sum(r["duration"] for r in rows) >= 40
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert set(r) == KEYS
        info = sf.info(str(root / r["audio"]))
        assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
        assert abs(info.frames / 16000 - r["duration"]) < 1e-3
        assert r["phonemes"] and r["normalized_text"]
        assert r["split"] in {"train", "valid", "test", "test_unseen"}
    engines = {r["engine"] for r in rows}
    assert len(engines) >= 2


@pytest.mark.parametrize("corpus", ["tiny_corpus", "styled_corpus"])
def test_splits_disjoint_and_unseen_speakers(corpus, request):
    rows = read_metadata(request.getfixturevalue(corpus))
    by_sentence: dict = {}
    for r in rows:
        for sent in r["sentences"]:
            by_sentence.setdefault(sent.lower(), set()).add(r["split"])
    assert all(len(v) == 1 for v in by_sentence.values())
    unseen = {"flite_rms", "espeak_en-gb-scotland+f3"}
    for r in rows:
        assert (r["speaker"] in unseen) == (r["split"] == "test_unseen"), r
    train_speakers = {r["speaker"] for r in rows if r["split"] == "train"}
    assert not train_speakers & unseen


def test_sentence_split_is_stable():
    fr = {"train": 0.94, "valid": 0.02, "test": 0.02, "test_unseen": 0.02}
    assert sentence_split("Hello  World.", fr) == sentence_split("hello world.", fr)
    counts: dict = {}
    for s in load_sentences()[:5000]:
        k = sentence_split(s, fr)
        counts[k] = counts.get(k, 0) + 1
    assert 0.9 < counts["train"] / 5000 < 0.97 and counts["valid"] > 50


def test_plan_is_deterministic_and_uses_every_speaker():
    cfg = CorpusConfig(hours=1.0, seed=3, batch_size=2)
    try:
        speakers, unseen = resolve_speakers(cfg)
    except ValueError:
        pytest.skip("no synthesizer installed")
    sents = load_sentences()[:3000]
    a = [next(p) for p in [iter_plan(cfg, speakers, unseen, sents)] for _ in range(400)]
    b = [next(p) for p in [iter_plan(cfg, speakers, unseen, sents)] for _ in range(400)]
    assert [(t.speaker.id, t.items) for t in a] == [(t.speaker.id, t.items) for t in b]
    # every item: 1-3 sentences of one split, held-out speakers only on test_unseen, and
    # no sentence in two splits
    split_of: dict = {}
    for t in a:
        for it in t.items:
            assert 1 <= len(it.sentences) <= 3 and len(it.pauses) == len(it.sentences) - 1
            assert 0.75 <= it.pace <= 1.35 and -33 <= it.level_db <= -17
            assert all(0.2 <= p <= 1.2 for p in it.pauses)
            assert (t.speaker.id in unseen) == (it.split == "test_unseen")
            for _, norm in it.sentences:
                assert sentence_split(norm, cfg.split_fractions) == it.split
                assert split_of.setdefault(norm.lower(), it.split) == it.split
    assert {len(it.sentences) for t in a for it in t.items} == {1, 2, 3}
    assert {it.split for t in a for it in t.items} == {"train", "valid", "test", "test_unseen"}
    if len(speakers) <= 40:
        assert {t.speaker.id for t in a} == {s.id for s in speakers}
    c = [next(p) for p in [iter_plan(CorpusConfig(hours=1.0, seed=4, batch_size=2), speakers,
                                     unseen, sents)] for _ in range(5)]
    assert [t.items for t in c] != [t.items for t in a[:5]]


def test_plan_voices_of_other_languages_train_only():
    """Voices of other languages form one sampling group (as likely as each engine) and
    read train sentences only; without them the plan is the English voices' plan."""
    from flexicodec.data.synth import Speaker, derive_speakers

    english = [Speaker("flite_slt", "flite", "slt"), Speaker("flite_rms", "flite", "rms"),
               Speaker("espeak_en-us+m1", "espeak", "en-us+m1")]
    other = [Speaker("festival_pc_diphone", "festival", "pc_diphone"),
             Speaker("festival_czech_dita", "festival", "czech_dita")]
    other += derive_speakers(other[0], 2)
    assert [s.language for s in other] == ["it", "cs", "it", "it"]
    assert all(s.language == "en" for s in english)
    cfg = CorpusConfig(hours=1.0, seed=3, batch_size=2)
    sents = load_sentences()[:3000]
    unseen = {"flite_rms"}
    tasks = [next(p) for p in [iter_plan(cfg, english + other, unseen, sents)]
             for _ in range(600)]
    foreign = [t for t in tasks if t.speaker.language != "en"]
    assert {it.split for t in foreign for it in t.items} == {"train"}
    assert {t.speaker.id for t in foreign} == {s.id for s in other}
    assert 0.13 < len(foreign) / len(tasks) < 0.28        # weight 0.5 beside flite, espeak
    seen = [it.split for t in tasks if t.speaker.language == "en" and t.speaker.id != "flite_rms"
            for it in t.items]
    assert {"train", "valid", "test"} == set(seen)
    # the group is weighted like an engine
    heavy = CorpusConfig(hours=1.0, seed=3, batch_size=2,
                         engine_weights={"other_languages": 8.0})
    tasks8 = [next(p) for p in [iter_plan(heavy, english + other, unseen, sents)]
              for _ in range(300)]
    assert sum(t.speaker.language != "en" for t in tasks8) / len(tasks8) > 0.7
    # weight 0 leaves them out of the speakers (and so of corpus.json), all-zero is refused
    from flexicodec.data import corpus as corpus_mod
    monkey = pytest.MonkeyPatch()
    monkey.setattr(corpus_mod, "list_speakers", lambda engines=None: english + other[:2])
    try:
        spk, _ = resolve_speakers(CorpusConfig(hours=1.0, voice_variants=0, unseen_speakers=(),
                                               engine_weights={"other_languages": 0}))
        assert [s.id for s in spk] == [s.id for s in english]
        spk, _ = resolve_speakers(CorpusConfig(hours=1.0, voice_variants=0, unseen_speakers=()))
        assert len(spk) == len(english) + 2
    finally:
        monkey.undo()
    with pytest.raises(ValueError, match="leave none"):
        next(iter_plan(CorpusConfig(hours=1.0, engine_weights={"flite": 0, "espeak": 0,
                                                               "other_languages": 0}),
                       english + other, unseen, sents))
    # absent voices of other languages leave the English plan as it was
    a = [next(p) for p in [iter_plan(cfg, english, unseen, sents)] for _ in range(50)]
    b = [next(p) for p in [iter_plan(CorpusConfig(hours=1.0, seed=3, batch_size=2), english,
                                     unseen, sents)] for _ in range(50)]
    assert [(t.speaker.id, t.items) for t in a] == [(t.speaker.id, t.items) for t in b]


def test_plan_single_sentence_items_match_old_order():
    """With one sentence per item the plan hands out sentences in the order of the first
    builder (one queue of seen sentences, one of held-out ones)."""
    cfg = _legacy(hours=1.0, seed=5, batch_size=3)
    try:
        speakers, unseen = resolve_speakers(cfg)
    except ValueError:
        pytest.skip("no synthesizer installed")
    speakers = [s for s in speakers if s.language == "en"]   # the first builder's voices
    sents = load_sentences()[:2000]
    tasks = [next(p) for p in [iter_plan(cfg, speakers, unseen, sents)] for _ in range(60)]
    # the first builder: a seeded permutation, filtered, split into seen / held-out queues
    order = np.random.default_rng([cfg.seed, 1]).permutation(len(sents))
    norms = [normalize_text(sents[i]) for i in order]
    norms = [n for n in norms if cfg.min_words <= len(n.split()) <= cfg.max_words]
    seen = [n for n in norms if sentence_split(n, cfg.split_fractions) != "test_unseen"]
    held = [n for n in norms if sentence_split(n, cfg.split_fractions) == "test_unseen"]
    got_seen = [it.sentences[0][1] for t in tasks if t.speaker.id not in unseen
                for it in t.items]
    got_held = [it.sentences[0][1] for t in tasks if t.speaker.id in unseen for it in t.items]
    assert got_seen == seen[:len(got_seen)] and got_held == held[:len(got_held)]
    assert all(it.pace == 1.0 and it.level_db == -23.0 and not it.pauses
               for t in tasks for it in t.items)


def test_engine_failure_costs_one_item(tmp_path, monkeypatch):
    """A text the engine fails on costs its item only: the task's other items are written,
    the failure is reported; a build skips the items of failed.jsonl on every resume."""
    from flexicodec.data import corpus as corpus_mod
    from flexicodec.data.synth import SynthError

    cfg = CorpusConfig(hours=8 / 3600, seed=1, speakers=("flite_slt",), batch_size=3,
                       unseen_speakers=())
    _have(cfg)
    speakers, unseen = resolve_speakers(cfg)
    task = next(iter_plan(cfg, speakers[:1], unseen, load_sentences()[:500]))
    bad = task.items[1].sentences[0][1]
    real = corpus_mod.synthesize

    def flaky(texts, *a, **kw):
        if bad in texts:
            raise SynthError(f"cannot read {bad!r}")
        return real(texts, *a, **kw)
    monkeypatch.setattr(corpus_mod, "synthesize", flaky)
    rows, failed = corpus_mod.run_task(task, str(tmp_path / "t"), cfg.phoneme_voice)
    assert [r["id"] for r in rows] == [task.items[0].id, task.items[2].id]
    assert [f["id"] for f in failed] == [task.items[1].id] and "cannot read" in failed[0]["error"]
    assert all((tmp_path / "t" / r["audio"]).is_file() for r in rows)
    # a recorded failure is not retried: the build leaves that item out
    monkeypatch.undo()
    out = tmp_path / "c"
    out.mkdir()
    first = next(iter_plan(cfg, speakers, unseen, load_sentences())).items[0].id
    (out / "failed.jsonl").write_text(json.dumps({"id": first, "speaker": "flite_slt",
                                                  "error": "x"}) + "\n")
    summary = build_corpus(out, cfg, workers=1, progress=False, max_tasks=1)
    ids = [r["id"] for r in read_metadata(out)]
    assert first not in ids and ids and summary["failed_items"] == 1
    assert summary["utterances"] == len(ids)


def test_resume_after_interruption(tmp_path):
    cfg = CorpusConfig(hours=24 / 3600, seed=1, speakers=FLITE, batch_size=2)
    _have(cfg)
    out = tmp_path / "c"
    build_corpus(out, cfg, workers=1, progress=False, max_tasks=2)   # "killed" early
    rows = read_metadata(out)
    assert 0 < len(rows) <= 4
    # simulate a kill: a torn metadata line, an orphan temp wav and an orphan finished wav
    meta = out / "metadata.jsonl"
    meta.write_text(meta.read_text() + '{"id": "flite_slt_00')
    (out / "wavs" / "flite-slt").mkdir(parents=True, exist_ok=True)
    (out / "wavs" / "flite-slt" / ".x.tmp123.wav").write_bytes(b"junk")
    with pytest.raises(ValueError, match="other settings"):
        build_corpus(out, CorpusConfig(hours=cfg.hours, seed=2, speakers=cfg.speakers),
                     workers=1, progress=False)
    summary = build_corpus(out, cfg, workers=2, progress=False)
    rows2 = read_metadata(out)
    assert summary["hours"] * 3600 >= 24
    assert [r["id"] for r in rows2[: len(rows)]] == [r["id"] for r in rows]
    assert len({r["id"] for r in rows2}) == len(rows2)
    assert not list((out / "wavs").glob("*/.*.wav"))
    for line in meta.read_text().splitlines():
        json.loads(line)
    # a rerun with the target reached does nothing
    again = build_corpus(out, cfg, workers=1, progress=False)
    assert again["new_utterances"] == 0 and len(read_metadata(out)) == len(rows2)
    # the same seed from scratch gives the same items: same rows, same audio
    fresh = tmp_path / "fresh"
    build_corpus(fresh, cfg, workers=2, progress=False)
    fresh_rows = {r["id"]: r for r in read_metadata(fresh)}
    assert {r["id"] for r in rows} <= set(fresh_rows)   # the first tasks of the plan
    common = [r for r in rows2 if r["id"] in fresh_rows]
    assert len(common) >= len(rows2) // 2
    for r in common:
        assert fresh_rows[r["id"]] == r
        assert _sha1(out / r["audio"]) == _sha1(fresh / r["audio"])


def _sha1(path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _speech_db(x) -> float:
    """RMS level (dBFS) of the 10 ms frames within 40 dB of the loudest one."""
    frames = x[: len(x) // 160 * 160].reshape(-1, 160).astype(np.float64)
    db = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-20)
    return float(10 * np.log10(np.mean(10 ** (db[db > db.max() - 40] / 10))))


def _silent_runs(x, min_s: float) -> list[float]:
    """Lengths (s) of the runs of digital silence of at least ``min_s`` seconds."""
    quiet = np.concatenate([[0], (np.abs(x) < 1e-4).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(quiet))
    runs = (edges[1::2] - edges[::2]) / 16000
    return [float(r) for r in runs if r >= min_s]


def test_items_join_sentences_with_pauses_and_levels(styled_corpus):
    rows = read_metadata(styled_corpus)
    assert max(r["n_sentences"] for r in rows) > 1
    for r in rows:
        n = r["n_sentences"]
        assert 1 <= n <= 3 and len(r["sentences"]) == n and len(r["pauses"]) == n - 1
        assert r["normalized_text"] == " ".join(r["sentences"])
        assert all(sentence_split(s, {"train": 0.94, "valid": 0.02, "test": 0.02,
                                      "test_unseen": 0.02}) == r["split"]
                   for s in r["sentences"])
        assert 0.75 <= r["pace"] <= 1.35 and -33 <= r["level_db"] <= -17
        x, sr = sf.read(str(styled_corpus / r["audio"]), dtype="float32")
        # each pause is a stretch of silence of its drawn length (+ the edge padding)
        runs = _silent_runs(x, 0.2)
        assert len(runs) >= n - 1
        for p in r["pauses"]:
            assert 0.2 <= p <= 1.2 and any(p - 0.011 <= run <= p + 0.2 for run in runs)
        # speech level: the drawn one, lower only where the 0.95 peak limit applied
        peak = float(abs(x).max())
        assert peak <= 0.95 + 1e-3
        level = _speech_db(x)
        assert level <= r["level_db"] + 1.0
        assert level >= r["level_db"] - 1.5 or peak > 0.9, (r["id"], level, r["level_db"])


def test_old_corpus_resumes_with_old_settings(tmp_path):
    """A corpus.json written by the first builder (no item-style keys) resumes with the
    legacy flags and refuses the new defaults."""
    cfg = _legacy(hours=6 / 3600, seed=2, speakers=("flite_slt", "flite_rms"), batch_size=2)
    _have(cfg)
    out = tmp_path / "old"
    out.mkdir()
    old = {"seed": 2, "speakers": ["flite_rms", "flite_slt"], "unseen_speakers": ["flite_rms"],
           "split_fractions": cfg.split_fractions, "engine_weights": None, "batch_size": 2,
           "phoneme_voice": "en-us", "sample_rate": 16000, "min_words": 3, "max_words": 25,
           "hours": 1.0}
    speakers, _ = resolve_speakers(cfg)
    old["speakers"] = [s.id for s in speakers]
    (out / "corpus.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="other settings.*pace_range"):
        build_corpus(out, CorpusConfig(hours=cfg.hours, seed=2, speakers=cfg.speakers,
                                       batch_size=2), workers=1, progress=False)
    build_corpus(out, cfg, workers=1, progress=False, max_tasks=1)
    rows = read_metadata(out)
    assert rows and all(r["n_sentences"] == 1 and r["pace"] == 1.0 and
                        r["level_db"] == -23.0 and r["pauses"] == [] for r in rows)
    assert json.loads((out / "corpus.json").read_text())["pace_range"] == [1.0, 1.0]


def test_cli_build_flags(tmp_path, capsys):
    out = str(tmp_path / "x")
    for flags, msg in ((["--pace", "1"], "--pace takes two"),
                       (["--sentences-per-item", "1.5,2"], "--sentences-per-item takes two"),
                       (["--level-db=-10,-20"], "level_db_range must be"),
                       (["--pace", "0.1,1"], "pace_range must be"),
                       (["--pause=-1,1"], "pause_range must be"),
                       (["--voice-variants", "-1"], "voice_variants must be"),
                       (["--unseen", "flite_rms~v1"], "not derived speakers"),
                       (["--other-languages-weight=-1"], "engine_weights must be")):
        with pytest.raises(SystemExit):
            data_main(["build-corpus", "--hours", "0.001", "--out", out, *flags])
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_show_and_stats(tiny_corpus):
    out = subprocess.run([sys.executable, "-m", "flexicodec.data.cli", "show", str(tiny_corpus)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "hours per split" in out.stdout and "examples:" in out.stdout
    st = subprocess.run([sys.executable, "-m", "flexicodec.data.cli", "stats", str(tiny_corpus)],
                        capture_output=True, text=True)
    summary = summarize(tiny_corpus)
    assert json.loads(st.stdout)["utterances"] == summary["utterances"]
    assert "hours per voice language" in out.stdout
    assert list(summary["hours_per_voice_language"]) == ["en"]        # English voices only
    assert summary["hours_per_voice_language"]["en"] == pytest.approx(summary["hours"], abs=1e-3)
    bad = subprocess.run([sys.executable, "-m", "flexicodec.data.cli", "show", str(tiny_corpus / "nope")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "error" in bad.stderr


def test_corpus_benchmark_reports_worker_cpu():
    """benchmarks.corpus_build: a pool build and the in-process worker CPU figure."""
    from flexicodec.benchmarks.corpus_build import config_for, run
    from flexicodec.data.synth import list_speakers
    _have(CorpusConfig(hours=1.0, speakers=("flite_slt",)))
    cfg = config_for("flite", 0.1, voice_variants=1)
    assert cfg.engines == ("flite",) and cfg.engine_weights == {"other_languages": 0}
    other = [s for s in list_speakers(["festival"]) if s.language != "en"]
    assert (config_for("other_languages", 0.1) is None) == (not other)
    r = run("flite", cfg, 0.1, 1)
    assert r["voice_variants"] == 1 and r["audio_hours"] * 60 >= 0.1
    assert r["worker_audio_s"] >= 6 and r["worker_cpu_s"] > 0
    assert 1 < r["audio_s_per_cpu_s"] < 10000 and r["hours_per_cpu_min"] > 0
