"""One vocabulary on the command line. The five trainers share their run flags
(common.run_flags): same names, destinations, defaults and help (the training runs
themselves are covered by the tiny training tests: test_train_asr, test_lm_pipeline,
test_tts_pipeline, test_distributed). Every command writes outputs with -o/--out, takes
the rate as --frame-rate or --threshold (never both) and none keeps a retired spelling."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
from pathlib import Path

import pytest

from flexicodec.common.run_flags import (EFFECTIVE_CONFIG, add_run_flags, apply_overrides,
                                         effective_config, out_model_dir, parse_run_args)

TRAINERS = {"flexicodec.codec.asr.train": "flexicodec asr-train", "flexicodec.codec.train": "flexicodec train",
            "flexicodec.lm.train": "flexicodec-lm train", "flexicodec.lm.finetune": "flexicodec-lm finetune",
            "flexicodec.tts.train_acoustic": "flexicodec-tts train-acoustic"}
COMMON = ("--config", "--run-dir", "--out-model", "--max-steps", "--max-minutes", "--resume",
          "--cpu", "--release-memory", "--set")
#: flags only some trainers implement (keyword switches of add_run_flags)
OPTIONAL = {"--stop-after": {"flexicodec.codec.asr.train", "flexicodec.codec.train"},
            "--mixed-precision": {"flexicodec.codec.asr.train", "flexicodec.codec.train"}}
#: earlier spellings of the same things, gone from every trainer
RETIRED = ("--out", "--output", "--steps", "--merge-out", "--model-dir")


def actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def describe(a: argparse.Action) -> tuple:
    return (a.dest, a.default, a.help, a.type, a.choices, a.nargs, a.const, a.metavar,
            type(a).__name__)


@pytest.fixture(scope="module")
def parsers() -> dict[str, argparse.ArgumentParser]:
    out = {}
    for module, prog in TRAINERS.items():
        p = importlib.import_module(module).build_parser()
        assert p.prog == prog
        out[module] = p
    return out


def test_common_flags_are_the_same_in_every_trainer(parsers):
    ref = actions(add_run_flags(argparse.ArgumentParser(), stop_after=True,
                                mixed_precision=True))
    for module, p in parsers.items():
        acts = actions(p)
        for flag in COMMON:
            assert flag in acts, f"{module} lacks {flag}"
            assert describe(acts[flag]) == describe(ref[flag]), (module, flag)
        for flag, owners in OPTIONAL.items():
            assert (flag in acts) == (module in owners), (module, flag)
            if flag in acts:
                assert describe(acts[flag]) == describe(ref[flag]), (module, flag)
        assert acts["--run-dir"].required, module
        for flag in RETIRED:
            assert flag not in acts, f"{module} still takes {flag}"


def test_config_is_optional_only_where_the_trainer_has_defaults(parsers):
    required = {m: actions(p)["--config"].required for m, p in parsers.items()}
    assert required == {"flexicodec.codec.asr.train": True, "flexicodec.codec.train": True, "flexicodec.lm.train": True,
                        "flexicodec.lm.finetune": False, "flexicodec.tts.train_acoustic": False}


def test_parsed_values_and_the_default_final_model_directory(parsers, tmp_path):
    run = tmp_path / "run"
    base = ["--config", "c.yaml", "--data", "d", "--run-dir", str(run)]
    extra = {"flexicodec.lm.finetune": ["--model", "lm"]}
    for module, p in parsers.items():
        a = p.parse_args(base + extra.get(module, []) + ["--max-steps", "7", "--max-minutes",
                                                         "1.5", "--resume", "--cpu"])
        assert (a.max_steps, a.max_minutes, a.resume, a.cpu) == (7, 1.5, True, True), module
        assert out_model_dir(a) == run / "model", module
        a = p.parse_args(base + extra.get(module, []) + ["--out-model", str(tmp_path / "m")])
        assert (a.max_steps, a.max_minutes, a.resume, a.cpu) == (None, None, False, False)
        assert out_model_dir(a) == Path(tmp_path / "m"), module
        with pytest.raises(SystemExit):                     # --run-dir is required
            p.parse_args(["--config", "c.yaml", "--data", "d"] + extra.get(module, []))


def test_set_overrides_values_in_order_and_creates_sections():
    data = {"model": {"dim": 8, "semantic": {"source": "asr"}}, "train": {"lr": 1e-3}}
    out = apply_overrides(data, ["train.lr=2e-4", "model.semantic.asr_path=models/asr",
                                 "train.betas=[0.8, 0.99]", "train.compile=false",
                                 "train.lr=3e-4", "extra.new.key=1", "train.tag=e5",
                                 "train.name=inf"])
    assert out == {"model": {"dim": 8, "semantic": {"source": "asr", "asr_path": "models/asr"}},
                   "train": {"lr": 3e-4, "betas": [0.8, 0.99], "compile": False,
                             "tag": "e5", "name": "inf"},
                   "extra": {"new": {"key": 1}}}
    assert data["train"] == {"lr": 1e-3}                       # the input is not changed
    for bad in ("train.lr", "=3", "train..lr=1", "model.dim.x=1", "train.lr=[1, 2"):
        with pytest.raises(ValueError, match="--set"):
            apply_overrides(data, [bad])


def test_effective_config_is_written_to_the_run_dir_and_read_by_the_trainers(parsers, tmp_path):
    import yaml

    from flexicodec.codec.train import load_train_section

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {encoder_dim: 4}\ntrain: {batch_size: 8, segment_seconds: 1.0}\n")
    run = tmp_path / "run"
    p = parsers["flexicodec.codec.train"]
    a = p.parse_args(["--config", str(cfg), "--data", "d", "--run-dir", str(run)])
    assert effective_config(a) == str(cfg) and not run.exists()     # no --set: the file itself
    a = p.parse_args(["--config", str(cfg), "--data", "d", "--run-dir", str(run),
                      "--set", "train.batch_size=2", "--set", "model.encoder_dim=16"])
    path = effective_config(a)
    assert path == str(run / EFFECTIVE_CONFIG)
    assert yaml.safe_load(Path(path).read_text()) == {
        "model": {"encoder_dim": 16}, "train": {"batch_size": 2, "segment_seconds": 1.0}}
    assert load_train_section(path).batch_size == 2
    a = p.parse_args(["--config", str(cfg), "--data", "d", "--run-dir", str(run),
                      "--set", "train.batch_sise=2"])
    with pytest.raises(ValueError, match="batch_sise"):             # a typo is named
        load_train_section(effective_config(a))
    # through the trainers' parsing: a malformed override is a usage error, not a traceback
    for bad in (["--set", "train"], ["--set", "train.lr=[1"], ["--set", "model.encoder_dim.x=1"]):
        with pytest.raises(SystemExit) as exc:
            parse_run_args(p, ["--config", str(cfg), "--data", "d", "--run-dir", str(run)] + bad)
        assert exc.value.code == 2
    a = parse_run_args(p, ["--config", str(cfg), "--data", "d", "--run-dir", str(run),
                           "--set", "train.batch_size=3"])
    assert a.config == str(run / EFFECTIVE_CONFIG) and load_train_section(a.config).batch_size == 3
    # a trainer whose config is optional starts from an empty one
    a = parsers["flexicodec.tts.train_acoustic"].parse_args(
        ["--data", "d", "--run-dir", str(run), "--set", "train.max_steps=5"])
    assert yaml.safe_load(Path(effective_config(a)).read_text()) == {"train": {"max_steps": 5}}


# ------------------------------------------------------------------ every command's vocabulary
#: spellings replaced by -o/--out, --model / --codec, --frame-rate / --threshold, --rates,
#: --out-model, --lm-cache
RETIRED_ANYWHERE = ("--output", "--model-dir", "--codec-dir", "--target-rate",
                    "--target-frame-rate", "--merging-threshold", "--frame-rates", "--merge-out",
                    "--static-cache", "--compile")
#: every command line: (module or script path, its main)
COMMANDS = ("flexicodec.codec.cli:build_parser", "flexicodec.codec.eval.evaluate:main",
            "flexicodec.codec.eval.per_voice:main", "flexicodec.codec.train:build_parser",
            "flexicodec.codec.asr.train:build_parser", "flexicodec.codec.asr.evaluate:build_parser", "flexicodec.data.cli:main", "flexicodec.lm.cli:generate_main",
            "flexicodec.lm.tokenize:build_parser", "flexicodec.lm.text_tokenizer:main", "flexicodec.lm.train:build_parser",
            "flexicodec.lm.finetune:build_parser", "flexicodec.tts.cli:build_parser", "flexicodec.tts.evaluate:main",
            "flexicodec.tts.server:build_parser", "flexicodec.tts.voice_cli:build_parser",
            "flexicodec.tts.train_acoustic:build_parser", "flexicodec.benchmarks.codec_speed:parse_args",
            "flexicodec.benchmarks.corpus_build:main", "flexicodec.benchmarks.disc_speed:main",
            "flexicodec.benchmarks.lm_speedup:parse_args",
            "flexicodec.benchmarks.serve_load:main", "flexicodec.benchmarks.train_speed:main",
            "flexicodec.benchmarks.tts_speed:main", "scripts/codec_learning_curve.py:main",
            "scripts/diagnose_encoder_init.py:main", "scripts/diagnose_group_error.py:main",
            "scripts/diagnose_merging.py:main", "scripts/diagnose_quantization.py:main",
            "scripts/export_portable.py:main", "flexicodec.benchmarks.cpu_train_memory:main")


class _Captured(Exception):
    pass


def _parser_of(spec: str, monkeypatch) -> argparse.ArgumentParser:
    """The ArgumentParser a command builds: from build_parser(), or the one its main parses
    with (parse_args is intercepted before any work is done)."""
    target, fn = spec.split(":")
    if target.endswith(".py"):
        path = Path(__file__).resolve().parents[1] / target
        spec_ = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec_)
        spec_.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    if fn == "build_parser":
        return module.build_parser()
    seen = []

    def capture(self, args=None, namespace=None):
        seen.append(self)
        raise _Captured

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Captured):
        getattr(module, fn)([])
    monkeypatch.undo()
    return seen[0]


def _all_parsers(p: argparse.ArgumentParser):
    yield p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub in a.choices.values():
                yield from _all_parsers(sub)


@pytest.mark.parametrize("spec", COMMANDS)
def test_every_command_uses_the_one_vocabulary(spec, monkeypatch):
    for p in _all_parsers(_parser_of(spec, monkeypatch)):
        acts = actions(p)
        for flag in RETIRED_ANYWHERE:
            assert flag not in acts, f"{p.prog} takes {flag}"
        if "--out" in acts:                     # an output is always -o/--out
            assert acts["--out"].option_strings == ["-o", "--out"], p.prog
        if "--frame-rate" in acts and "--threshold" in acts:   # one rate knob at a time
            group = [g for g in p._mutually_exclusive_groups
                     if acts["--frame-rate"] in g._group_actions]
            assert group and acts["--threshold"] in group[0]._group_actions, p.prog
