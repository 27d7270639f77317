"""The GPU-machine scripts (scripts/device/*.sh, scripts/*.sh) parse, and a portable state
survives the trip in parts (scripts/device/state_parts.sh): split here, collected over two
calls there, assembled only when every part has arrived and its checksum matches; a trainer
started with KEEP=1 outlives its call and is stopped cleanly by the FINAL call."""
from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh")) + sorted((ROOT / "scripts/device").glob("*.sh"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def _there(cwd: Path, work: Path, body: str) -> subprocess.CompletedProcess:
    """Run ``body`` in ``cwd`` with state_parts.sh sourced and W=work."""
    return subprocess.run(["bash", "-c", f"source {ROOT}/scripts/device/state_parts.sh; {body}"],
                          cwd=cwd, env={"W": str(work), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)


def test_state_travels_in_parts(tmp_path):
    here = tmp_path / "here"
    state = here / "checkpoints" / "run_x"
    state.mkdir(parents=True)
    (state / "state.json").write_text('{"step": 7}')
    (state / "generator.safetensors").write_bytes(bytes(range(256)) * 9000)   # 2.3 MB
    out = subprocess.run(["bash", str(ROOT / "scripts/device/state_parts.sh"), "split",
                          "checkpoints/run_x", "1"], cwd=here, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    a, b = here / ".carry" / "a", here / ".carry" / "b"
    assert (a / "run_x.tar.part-aa").stat().st_size == 1_000_000
    assert (b / "run_x.tar.part-ab").is_file() and (b / "run_x.tar.sha256").is_file()
    # the machine: call 1 brings part a only, call 2 part b only; W keeps what arrived
    work, call1, call2 = tmp_path / "work", tmp_path / "call1", tmp_path / "call2"
    (call1 / ".carry").mkdir(parents=True)
    (call2 / ".carry").mkdir(parents=True)
    shutil.copytree(a, call1 / ".carry" / "a")
    shutil.copytree(b, call2 / ".carry" / "b")
    r = _there(call1, work, "collect_parts; assembled_state run_x")
    assert r.returncode != 0 and r.stdout == ""                    # incomplete: nothing
    r = _there(call2, work, "collect_parts; assembled_state run_x")
    assert r.returncode == 0, r.stderr
    got = Path(r.stdout.strip())
    assert got == work / "in" / "run_x"
    assert (got / "state.json").read_text() == '{"step": 7}'
    assert (got / "generator.safetensors").read_bytes() == (state / "generator.safetensors").read_bytes()
    # a damaged part is refused
    shutil.rmtree(work / "in")
    part = work / "parts" / "run_x.tar.part-ab"
    data = bytearray(part.read_bytes())
    data[1000] ^= 0xFF
    part.write_bytes(bytes(data))
    r = _there(call2, work, "assembled_state run_x")
    assert r.returncode != 0 and not (work / "in" / "run_x").exists()


def test_state_travels_in_three_parts(tmp_path):
    """``split DIR 1 1``: parts a and b of 1 MB, c the rest; the state assembles only once
    the third call has brought part c."""
    here = tmp_path / "here"
    state = here / "checkpoints" / "run_y"
    state.mkdir(parents=True)
    (state / "state.json").write_text('{"step": 8}')
    (state / "generator.safetensors").write_bytes(bytes(range(256)) * 9000)   # 2.3 MB
    (here / ".carry" / "c").mkdir(parents=True)
    (here / ".carry" / "c" / "run_y.tar.part-ac").write_bytes(b"stale")   # replaced
    out = subprocess.run(["bash", str(ROOT / "scripts/device/state_parts.sh"), "split",
                          "checkpoints/run_y", "1", "1"], cwd=here, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    sizes = [(here / ".carry" / L / f"run_y.tar.part-a{L}").stat().st_size for L in "abc"]
    assert sizes[:2] == [1_000_000, 1_000_000] and 0 < sizes[2] < 1_000_000
    work = tmp_path / "work"
    for i, L in enumerate("abc"):
        call = tmp_path / f"call{L}"
        (call / ".carry").mkdir(parents=True)
        shutil.copytree(here / ".carry" / L, call / ".carry" / L)
        r = _there(call, work, "collect_parts; assembled_state run_y")
        assert (r.returncode == 0) == (i == 2), (L, r.stdout, r.stderr)
    got = Path(r.stdout.strip())
    assert (got / "generator.safetensors").read_bytes() == \
        (state / "generator.safetensors").read_bytes()
    for bad in (["5", "5"], ["0"], ["x"]):          # past the end; not a size
        out = subprocess.run(["bash", str(ROOT / "scripts/device/state_parts.sh"), "split",
                              "checkpoints/run_y", *bad], cwd=here, capture_output=True,
                             text=True)
        assert out.returncode == 2, bad


def test_split_refuses_what_is_not_a_state(tmp_path):
    (tmp_path / "x").mkdir()
    out = subprocess.run(["bash", str(ROOT / "scripts/device/state_parts.sh"), "split", "x", "1"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 2 and "not a portable state" in out.stderr


def _tree(tmp_path: Path) -> Path:
    """The checkout, without its models and hidden folders (.git, and the .debs/.whl/.carry
    a GPU call would carry: the scripts would unpack or install them into the checkout)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for entry in ROOT.iterdir():
        if not entry.name.startswith(".") and \
                entry.name not in ("checkpoints", "flexicodec_pretrained", "runs"):
            (tree / entry.name).symlink_to(entry)
    return tree


def _env(tmp_path: Path, **kw) -> dict:
    return {"PATH": f"{Path(shutil.which('python3')).parent}:/usr/bin:/bin",
            "HOME": str(tmp_path), "W": "work", "DEVICE": "cpu", **kw}


def _phase_v2(tree: Path, env: dict, timeout: float, **kw) -> subprocess.CompletedProcess:
    """One call of scripts/device/phase_v2.sh in ``tree`` with ``env`` and the ``kw``
    variables."""
    return subprocess.run(["bash", "scripts/device/phase_v2.sh"], cwd=tree, text=True,
                          capture_output=True, timeout=timeout, env={**env, **kw})


def _carry_file(tree: Path, src: Path, folder: str = "z") -> None:
    """``src`` as the parts a later call carries (state_parts.sh split_file) in
    ``tree/.carry/FOLDER``."""
    carry = tree / ".carry" / folder
    carry.mkdir(parents=True)
    r = subprocess.run(["bash", "-c", f"source {ROOT}/scripts/device/state_parts.sh; "
                        f"split_file {src} {carry}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _unpack(parts: list[Path], dest: Path) -> None:
    dest.mkdir()
    subprocess.run(f"cat {' '.join(map(str, parts))} | tar x -C {dest}", shell=True, check=True)


def test_final_call_packs_the_state_with_a_relative_work_folder(tmp_path):
    """phase_v2.sh FINAL=1 returns the stage's portable state as parts that reassemble to it,
    with the machine's work folder W given relative to the checkout (as by default)."""
    tree = _tree(tmp_path)
    work = tree / "work"
    state = work / "portable" / "codec_v2"
    state.mkdir(parents=True)
    (state / "state.json").write_text('{"step": 9}')
    (state / "generator.safetensors").write_bytes(bytes(range(256)) * 4000)
    (state / "discriminator.safetensors").write_bytes(bytes(range(256)) * 100)
    (work / "corpus_v2").mkdir()
    (work / "corpus_v2.done").touch()                    # no corpus: the trainer fails fast
    asr = tmp_path / "asr"
    asr.mkdir()
    (asr / "config.json").write_text("{}")
    # a carried compile cache this torch cannot read is dropped, with a line in the log
    (tmp_path / "compile_cache.bin.gz").write_bytes(gzip.compress(b"not a cache" * 1000))
    _carry_file(tree, tmp_path / "compile_cache.bin.gz")
    out = tmp_path / "out"
    r = _phase_v2(tree, _env(tmp_path, OUT=str(out), ASR=str(asr), FINAL="1", BUDGET="120"),
                  timeout=300)
    parts = sorted(out.glob("codec_v2.tar.part-*"))
    assert parts, r.stdout + r.stderr
    assert "carried compile cache is unreadable here" in r.stdout, r.stdout
    assert not (work / "compile_cache.bin").exists()
    unpacked = tmp_path / "unpacked"
    _unpack(parts, unpacked)
    assert (unpacked / "codec_v2" / "state.json").read_text() == '{"step": 9}'
    assert (unpacked / "codec_v2" / "generator.safetensors").read_bytes() == \
        (state / "generator.safetensors").read_bytes()


def test_bench_runs_the_named_recipes(tiny_corpus, tmp_path):
    """BENCH=1 BENCH_RECIPES=...: the throughput benchmark of those recipes only (a CPU dry
    run: --quick), its table returned in OUT; without a state the call does not train."""
    import json

    from flexicodec.codec.asr.model import PhonemeASR, PhonemeASRConfig

    tree = _tree(tmp_path)
    work = tree / "work"
    work.mkdir()
    (work / "corpus_v2").symlink_to(tiny_corpus)
    (work / "corpus_v2.done").touch()
    asr = tmp_path / "asr"
    PhonemeASR(PhonemeASRConfig.tiny()).save_pretrained(asr)
    out = tmp_path / "out"
    r = _phase_v2(tree, _env(tmp_path, ASR=str(asr), BENCH="1", BUDGET="200", OUT=str(out),
                             BENCH_RECIPES="v2,v2_whole_batch_d"), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads((out / "train_speed.json").read_text())["rows"]
    assert [row["recipe"] for row in rows] == ["v2", "v2_whole_batch_d"], r.stdout
    assert "not training" in r.stdout


def test_compile_warm_up_runs_while_the_corpus_builds(tmp_path):
    """WARM_COMPILE=1: the call that builds the corpus also runs the benchmark's v2 recipe on
    a tiny corpus of its own in the background (a CPU dry run: --quick) and waits for it;
    without a state the call does not train."""
    import json

    from flexicodec.codec.asr.model import PhonemeASR, PhonemeASRConfig

    tree = _tree(tmp_path)
    asr = tmp_path / "asr"
    PhonemeASR(PhonemeASRConfig.tiny()).save_pretrained(asr)
    r = _phase_v2(tree, _env(tmp_path, ASR=str(asr), WARM_COMPILE="1", HOURS="0.03",
                             BUDGET="280", OUT=str(tmp_path / "out")), timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "compile warm-up on a tiny corpus" in r.stdout, r.stdout
    assert "compile warm-up exited: rc=0" in r.stdout and "FAILED" not in r.stdout, \
        r.stdout + (tree / "work" / "warm.log").read_text()
    rows = json.loads((tree / "work" / "warm" / "train_speed.json").read_text())["rows"]
    assert [row["recipe"] for row in rows] == ["v2"] and not rows[0]["error"]
    assert (tree / "work" / "corpus_v2.done").exists() and "not training" in r.stdout


def test_corpus_waits_for_the_voices_of_other_languages(tmp_path):
    """OTHER_VOICES=1: while festival's voices of other languages have not all arrived (here a
    synthesizer prefix without engines), the call builds no corpus and does not train; a
    .debs_other* folder brings the voices its voices.txt names (over several calls); a voice
    that has arrived and still cannot be used is an error, and so is a folder without
    voices.txt."""
    tree = _tree(tmp_path)
    prefix = tmp_path / "prefix"
    (prefix / "usr").mkdir(parents=True)
    env = _env(tmp_path, OTHER_VOICES="1", BUDGET="60", FLEXICODEC_SYNTH_PREFIX=str(prefix),
               OUT=str(tmp_path / "out"))
    r = _phase_v2(tree, env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "have not all arrived" in r.stdout and "czech_krb" in r.stdout
    assert not (tree / "work" / "corpus_v2").exists()
    assert "continuing" not in r.stdout and "train" not in r.stdout.split("arrived")[-1]
    # a folder that names no voice: still waiting
    (tree / ".debs_other").mkdir()
    (tree / ".debs_other" / "voices.txt").write_text("")
    r = _phase_v2(tree, env, timeout=120)
    assert r.returncode == 0 and "have not all arrived" in r.stdout, r.stdout + r.stderr
    # a folder without voices.txt: an error
    (tree / ".debs_other2").mkdir()
    r = _phase_v2(tree, env, timeout=120)
    assert r.returncode == 1 and "has no voices.txt" in r.stdout, r.stdout + r.stderr
    # arrived (named by a later folder's voices.txt) but still not usable: an error, not a wait
    (tree / ".debs_other2" / "voices.txt").write_text("czech_krb\nczech_ph\n")
    r = _phase_v2(tree, env, timeout=120)
    assert r.returncode == 2 and "czech_krb czech_ph arrived" in r.stdout, r.stdout + r.stderr
    assert "not usable here" in r.stdout
    assert not (tree / "work" / "corpus_v2").exists()
    # the arrivals are remembered by the machine: without the folder, still an error
    shutil.rmtree(tree / ".debs_other2")
    r = _phase_v2(tree, env, timeout=120)
    assert r.returncode == 2 and "czech_krb czech_ph arrived" in r.stdout, r.stdout + r.stderr


def test_kept_trainer_outlives_its_call_and_final_stops_it(tiny_corpus, tmp_path):
    """KEEP=1: the trainer started by one call is still training when the call returns (with
    the portable state of its latest checkpoint); the next call (FINAL=1) finds it, stops it
    through RUN/STOP and packs the state it wrote."""
    import json
    import os
    import signal

    import torch

    from flexicodec.codec.asr.model import PhonemeASR, PhonemeASRConfig

    tree = _tree(tmp_path)
    work = tree / "work"
    work.mkdir()
    (work / "corpus_v2").symlink_to(tiny_corpus)
    (work / "corpus_v2.done").touch()
    torch.manual_seed(0)
    asr = tmp_path / "asr"
    PhonemeASR(PhonemeASRConfig.tiny()).save_pretrained(asr)
    sets = ("train.batch_size=2 train.disc_batch_size=1 train.compile=false train.num_workers=0 "
            "train.log_every=1 "
            "train.eval_every=100000 train.eval_quality=false train.save_every=2")
    env = _env(tmp_path, ASR=str(asr), FRESH="1", SETS=sets)
    pid_file = work / "codec_v2.pid"
    # a compile cache of an earlier run, carried in parts (a real one: a small inductor graph)
    made = subprocess.run([sys.executable, "-c", (
        "import sys, torch\n"
        "from flexicodec.common.compile_cache import save_compile_cache\n"
        "f = torch.compile(lambda x: torch.sin(x) * 2, dynamic=False)\n"
        "f(torch.randn(8))\n"
        "print(save_compile_cache(sys.argv[1]))"), str(tmp_path / "compile_cache.bin")],
        capture_output=True, text=True, env={**os.environ,
                                             "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind")})
    assert made.returncode == 0 and int(made.stdout.split()[-1]) >= 1, made.stderr
    (tmp_path / "compile_cache.bin.gz").write_bytes(
        gzip.compress((tmp_path / "compile_cache.bin").read_bytes()))
    _carry_file(tree, tmp_path / "compile_cache.bin.gz")
    try:
        a = _phase_v2(tree, env, timeout=120, KEEP="1", KEEP_MINUTES="3", BUDGET="40",
                      OUT=str(tmp_path / "out_a"))
        assert "detached" in a.stdout and "trainer still running" in a.stdout, \
            a.stdout + a.stderr
        assert re.search(r"compile cache carried in: [1-9][0-9]* artifacts", a.stdout), a.stdout
        # the running trainer's latest portable state already came back with this call
        assert "returned the portable state of step" in a.stdout, a.stdout
        assert sorted((tmp_path / "out_a").glob("codec_v2.tar.part-*"))
        b = _phase_v2(tree, env, timeout=120, FINAL="1", BUDGET="40", RESERVE="30",
                      OUT=str(tmp_path / "out_b"))
        assert "already running" in b.stdout and "trainer exited" in b.stdout, \
            b.stdout + b.stderr
    finally:                        # never leave a trainer behind
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
    log = (work / "codec_v2.log").read_text()
    assert log.count("[train] generator") == 1          # one start-up for both calls
    assert "stopping at step" in log
    parts = sorted((tmp_path / "out_b").glob("codec_v2.tar.part-*"))
    assert parts, b.stdout
    _unpack(parts, tmp_path / "unpacked")
    state = json.loads((tmp_path / "unpacked" / "codec_v2" / "state.json").read_text())
    logged = [json.loads(line)["step"] for line in
              (work / "runs" / "codec_v2" / "metrics.jsonl").read_text().splitlines()]
    assert state["step"] >= 1 and state["step"] == max(logged)
    # EMA_OUT=1: the codec the stopped trainer exported (EMA weights), without its ASR
    assert "(EMA weights)" in log
    # (this trainer did not compile: its log says the cache went unused; the EMA_OUT call
    # returns whatever cache the machine holds, here the one carried in)
    assert "not used: train.compile is off" in log
    c = _phase_v2(tree, env, timeout=120, EMA_OUT="1", OUT=str(tmp_path / "out_c"))
    assert c.returncode == 0 and "returned the exported codec" in c.stdout, c.stdout + c.stderr
    assert "returned the compile cache" in c.stdout, c.stdout
    cache_parts = sorted((tmp_path / "out_c").glob("compile_cache.bin.gz.part-*"))
    assert gzip.decompress(b"".join(p.read_bytes() for p in cache_parts)) == \
        (tmp_path / "compile_cache.bin").read_bytes()
    assert (tmp_path / "out_c" / "compile_cache.bin.gz.sha256").is_file()
    # CACHE_OUT=1: the cache alone (when it did not fit beside the codec), the same bytes
    d = _phase_v2(tree, env, timeout=60, CACHE_OUT="1", OUT=str(tmp_path / "out_d"))
    assert d.returncode == 0 and "returned the compile cache" in d.stdout, d.stdout + d.stderr
    assert sorted(p.name for p in (tmp_path / "out_d").iterdir()) == \
        sorted(p.name for p in (tmp_path / "out_c").glob("compile_cache.bin.gz*"))
    assert b"".join(p.read_bytes() for p in sorted((tmp_path / "out_d").glob("*.part-*"))) \
        == b"".join(p.read_bytes() for p in cache_parts)
    parts = sorted((tmp_path / "out_c").glob("codecs.tar.part-*"))
    (tmp_path / "ema").mkdir()
    subprocess.run(f"cat {' '.join(map(str, parts))} | tar xz -C {tmp_path / 'ema'}",
                   shell=True, check=True)
    from flexicodec.codec.model import FlexiCodec
    subprocess.run([sys.executable, str(ROOT / "scripts/device/transport.py"), "unpack",
                    str(tmp_path / "ema" / "codec_v2_ema.safetensors"), str(asr),
                    str(tmp_path / "ema_codec")], check=True, capture_output=True)
    got = FlexiCodec.from_pretrained(tmp_path / "ema_codec").state_dict()
    want = FlexiCodec.from_pretrained(work / "runs" / "codec_v2" / "model").state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.allclose(got[k].float(), want[k].float(), rtol=2e-3, atol=1e-4), k  # fp16


def test_unfinished_corpus_with_other_settings_is_rebuilt(tmp_path):
    """A corpus build that an earlier call left unfinished with other settings (no DIR.done)
    does not block the machine: it is removed and built afresh, and marked done; a finished
    corpus is never touched."""
    import json
    tree = _tree(tmp_path)
    corpus = tree / "work" / "corpus_v2"
    corpus.mkdir(parents=True)
    (corpus / "corpus.json").write_text(json.dumps({"seed": 12345}))   # other settings
    (corpus / "stale.txt").write_text("left by an earlier call")
    asr = tmp_path / "asr"              # no state here, so no training: any model folder
    asr.mkdir()
    (asr / "config.json").write_text("{}")
    env = _env(tmp_path, BUDGET="120", HOURS="0.005", OUT=str(tmp_path / "out"), ASR=str(asr))
    r = _phase_v2(tree, env, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "unfinished build with other settings" in r.stdout, r.stdout
    assert (tree / "work" / "corpus_v2.done").is_file()
    assert not (corpus / "stale.txt").exists()
    assert json.loads((corpus / "corpus.json").read_text())["seed"] != 12345
    assert "no state to continue yet" in r.stdout            # no state here: no training
    # a finished corpus stays as it is
    (corpus / "stale.txt").write_text("kept")
    r = _phase_v2(tree, env, timeout=600)
    assert r.returncode == 0 and "building the corpus" not in r.stdout, r.stdout + r.stderr
    assert (corpus / "stale.txt").read_text() == "kept"
