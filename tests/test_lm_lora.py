"""LoRA adapters: only adapter weights train; save/load; merge gives the same outputs."""
from __future__ import annotations

import torch

from flexicodec.common.pretrained import CheckpointError
from flexicodec.lm.finetune import apply_lora, load_adapter, save_adapter
from flexicodec.lm.layout import build_sequence, collate
from flexicodec.lm.model import SpeechLM, SpeechLMConfig
from flexicodec.lm.train import TrainConfig, run_training

torch.set_num_threads(1)
TINY = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
            num_text=40, semantic_size=32, max_group=8, max_positions=256)


def test_lora_trains_only_adapters_and_merges(tmp_path):
    torch.manual_seed(0)
    base = SpeechLM(SpeechLMConfig(**TINY))
    base.save_pretrained(tmp_path / "lm")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    pm = apply_lora(base, rank=4, alpha=8, dropout=0.0)
    names = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    items = [build_sequence(base.vocab, [1, 2, 3], 6.25, [4, 5, 6, 7], [1, 2, 3, 8]),
             build_sequence(base.vocab, [9, 8], 6.25, [10, 11], [2, 2])]
    cfg = TrainConfig(lr=1e-2, warmup_steps=1, max_steps=15, batch_tokens=1024,
                      log_every=5, eval_every=15, save_every=15, mixed_precision="no")
    res = run_training(pm, items, [1.0, 1.0], items, cfg, tmp_path / "run")
    pm = res["model"]
    # frozen base weights untouched, adapters moved
    base_now = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                for k, v in pm.state_dict().items() if "lora_" not in k}
    for k, v in before.items():
        assert torch.equal(base_now[k], v), k
    assert any(float(v.abs().sum()) > 0 for k, v in pm.state_dict().items() if "lora_B" in k)
    b = collate(items)
    pm.eval()
    with torch.no_grad():
        ref = pm(b["input_ids"], b["length_in"], b["attention_mask"], b["position_ids"])
    assert not torch.allclose(ref.logits, base_out(tmp_path / "lm", b).logits, atol=1e-4)
    save_adapter(pm, tmp_path / "adapter", "ident")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert "adapter_model.safetensors" in files and "lm_adapter.json" in files
    # reload on a fresh copy of the base: same outputs, attached and merged
    attached = load_adapter(SpeechLM.from_pretrained(tmp_path / "lm"), tmp_path / "adapter")
    merged = load_adapter(SpeechLM.from_pretrained(tmp_path / "lm"), tmp_path / "adapter",
                          merge=True, base_id="ident")
    assert isinstance(merged, SpeechLM)
    with torch.no_grad():
        for m in (attached, merged):
            o = m(b["input_ids"], b["length_in"], b["attention_mask"], b["position_ids"])
            assert torch.allclose(o.logits, ref.logits, atol=1e-4)
            assert torch.allclose(o.length_logits, ref.length_logits, atol=1e-4)
    try:
        load_adapter(SpeechLM.from_pretrained(tmp_path / "lm"), tmp_path / "adapter",
                     base_id="another")
    except CheckpointError:
        pass
    else:
        raise AssertionError("adapter loaded onto a different base LM")


def base_out(path, b):
    m = SpeechLM.from_pretrained(path)
    with torch.no_grad():
        return m(b["input_ids"], b["length_in"], b["attention_mask"], b["position_ids"])
