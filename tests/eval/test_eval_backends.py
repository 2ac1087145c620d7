"""HFBackend generation/scoring on a tiny random Llama, adapter loading (LoRA, PRoLoRA), the vLLM gate."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch
from eval_helpers import build_tiny_llama

from eval.backends import (
    VLLM_MISSING,
    HFBackend,
    cut_at_stop,
    load_model_and_tokenizer,
    make_backend,
)
from eval.common import EvalError

PROMPTS = ["The capital of France is", "Hi", "Question: what is 2+2?\nAnswer:"]


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    torch.set_num_threads(1)
    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir))
    return HFBackend(model, tokenizer)


def test_tokenizer_is_left_padded(backend):
    assert backend.tokenizer.padding_side == "left" and backend.tokenizer.pad_token is not None


def test_greedy_generation_does_not_depend_on_batching(backend):
    one = backend.generate(PROMPTS, 12, batch_size=1)
    three = backend.generate(PROMPTS, 12, batch_size=3)
    assert one == three
    assert all(len(c) == 1 and c[0] for c in one)


def test_greedy_batches_group_similar_lengths(backend):
    """Longest prompts batch together (less padding); results still come back in prompt order."""
    assert backend._batches(PROMPTS, 2, by_length=True) == [[2, 0], [1]]
    assert backend._batches(PROMPTS, 2, by_length=False) == [[0, 1], [2]]
    assert backend.generate(PROMPTS, 8, batch_size=2) == backend.generate(PROMPTS, 8, batch_size=1)


def test_stop_strings_cut_completions(backend):
    full = backend.generate(PROMPTS, 12, batch_size=3)
    text = full[0][0]
    stop = text[len(text) // 2: len(text) // 2 + 2]
    stopped = backend.generate(PROMPTS, 12, batch_size=3, stop=[stop, "\x00never"])
    assert stopped[0][0] == text[: text.find(stop)]
    for before, after in zip(full, stopped):
        assert after[0] == cut_at_stop(before[0], [stop])


def test_cut_at_stop_uses_earliest_match():
    assert cut_at_stop("abc\n\ndef\nx", ["\n\n", "\n"]) == "abc"
    assert cut_at_stop("abc", ["z"]) == "abc" and cut_at_stop("abc", None) == "abc"


def test_sampling_returns_n_completions(backend):
    torch.manual_seed(0)
    first = backend.generate(PROMPTS[:2], 6, temperature=1.0, top_p=0.9, n=3, batch_size=2)
    torch.manual_seed(0)
    again = backend.generate(PROMPTS[:2], 6, temperature=1.0, top_p=0.9, n=3, batch_size=2)
    assert first == again and [len(c) for c in first] == [3, 3]
    assert len(set(first[0])) > 1  # a random model samples different continuations
    with pytest.raises(ValueError, match="greedy"):
        backend.generate(PROMPTS, 4, n=2)


def test_score_choices_match_unpadded_forward(backend):
    choices = [" A", " B", " C", " D"]
    ids = backend.choice_token_ids(choices)
    batched = backend.score_choices(PROMPTS, choices, batch_size=3)
    for prompt, scores in zip(PROMPTS, batched):
        enc = backend.tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            logits = backend.model(**enc).logits[0, -1]
        expected = torch.log_softmax(logits.float(), -1)[ids]
        assert torch.allclose(torch.tensor(scores), expected, atol=1e-4)


def _logits(model, tokenizer, text="Adapters must not change under loading."):
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def _save_adapter_and_merged(peft_model, tmp_path):
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    return adapter_dir, peft_model.merge_and_unload()


def test_lora_adapter_loading_matches_merged_model(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = build_tiny_llama()
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                 init_lora_weights=False))
    adapter_dir, merged = _save_adapter_and_merged(peft_model, tmp_path)
    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir), adapter_name_or_path=str(adapter_dir))
    reference = build_tiny_llama()
    assert not torch.allclose(_logits(model, tokenizer), _logits(reference, tokenizer))  # the adapter matters
    assert torch.allclose(_logits(model, tokenizer), _logits(merged, tokenizer), atol=1e-5)


def test_prolora_adapter_loading_matches_merged_model(tiny_model_dir, tmp_path):
    prolora = pytest.importorskip("prolora")
    from peft import get_peft_model

    config = prolora.ProLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], unshared_r=1,
                                   reduce_lora_A_x=2, reduce_lora_B_x=2)
    peft_model = get_peft_model(build_tiny_llama(), config)
    torch.manual_seed(1)
    for param in peft_model.parameters():
        if param.requires_grad:  # B starts at zero: give every adapter tensor values so the delta is visible
            param.data.normal_(0, 0.5)
    adapter_dir, merged = _save_adapter_and_merged(peft_model, tmp_path)
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["peft_type"] == "PROLORA"
    args = argparse.Namespace(use_vllm=False, load_in_8bit=False, model_name_or_path=str(tiny_model_dir),
                              tokenizer_name_or_path=None, adapter_name_or_path=str(adapter_dir))
    loaded = make_backend(args)
    assert not torch.allclose(_logits(loaded.model, loaded.tokenizer), _logits(build_tiny_llama(), loaded.tokenizer))
    assert torch.allclose(_logits(loaded.model, loaded.tokenizer), _logits(merged, loaded.tokenizer), atol=1e-5)


def test_base_model_comes_from_adapter_config(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(build_tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    peft_model.peft_config["default"].base_model_name_or_path = str(tiny_model_dir)
    peft_model.save_pretrained(tmp_path / "adapter")
    model, _ = load_model_and_tokenizer(None, adapter_name_or_path=str(tmp_path / "adapter"))
    assert model.config.hidden_size == 32


def test_bad_adapter_and_model_paths(tiny_model_dir, tmp_path):
    with pytest.raises(EvalError, match="no adapter_config.json"):
        load_model_and_tokenizer(str(tiny_model_dir), adapter_name_or_path=str(tmp_path))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(EvalError, match="IA3"):
        load_model_and_tokenizer(str(tiny_model_dir), adapter_name_or_path=str(tmp_path))
    with pytest.raises(EvalError, match="cannot load"):
        load_model_and_tokenizer(str(tmp_path / "missing_model"))


def test_use_vllm_without_vllm_is_one_clear_error(monkeypatch, tiny_model_dir, capsys):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    args = argparse.Namespace(use_vllm=True, load_in_8bit=False, model_name_or_path=str(tiny_model_dir),
                              tokenizer_name_or_path=None, adapter_name_or_path=None)
    with pytest.raises(EvalError) as err:
        make_backend(args)
    assert str(err.value) == VLLM_MISSING and str(err.value).startswith("--use_vllm needs vLLM: pip install vllm")

    from eval_helpers import FIXTURES

    from eval.common import cli_main
    from eval.gsm import run_eval as gsm

    with pytest.raises(SystemExit) as exit_info:
        cli_main(gsm.main, gsm.build_parser(), ["--data_dir", str(FIXTURES / "gsm"), "--model_name_or_path",
                                                 str(tiny_model_dir), "--use_vllm", "--save_dir", "/nonexistent"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.strip() == "error: " + VLLM_MISSING


def test_load_in_8bit_with_lora_adapter(tiny_model_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(build_tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    adapter_dir, merged = _save_adapter_and_merged(peft_model, tmp_path)
    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir), adapter_name_or_path=str(adapter_dir),
                                                load_in_8bit=True)
    assert "8bit" in type(model.get_base_model().model.layers[0].self_attn.k_proj).__name__
    scores = HFBackend(model, tokenizer).score_choices(PROMPTS, [" A", " B"], batch_size=3)
    reference = HFBackend(merged, tokenizer).score_choices(PROMPTS, [" A", " B"], batch_size=3)
    assert torch.allclose(torch.tensor(scores), torch.tensor(reference), atol=0.05)


def _fake_vllm(monkeypatch):
    """A stand-in ``vllm`` package recording how VLLMBackend drives it (vLLM itself needs a GPU)."""
    import types

    calls: dict = {}

    class SamplingParams:
        def __init__(self, **kwargs):
            calls["sampling"] = kwargs
            self.n = kwargs["n"]

    class LoRARequest:
        def __init__(self, name, int_id, path):
            self.name, self.int_id, self.path = name, int_id, path
            calls["lora_files"] = sorted(p.name for p in Path(path).iterdir())
            calls["lora_config"] = json.loads((Path(path) / "adapter_config.json").read_text())

    class LLM:
        def __init__(self, **kwargs):
            calls["llm"] = kwargs

        def generate(self, prompts, params, lora_request=None):
            calls["lora_request"] = lora_request
            out = types.SimpleNamespace
            return [out(outputs=[out(text=f"{p}|{i}\n\nrest") for i in range(params.n)]) for p in prompts]

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    for name, module in {"vllm": vllm, "vllm.lora": lora, "vllm.lora.request": request}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_vllm_backend_serves_prolora_as_exported_lora(monkeypatch, tiny_model_dir, tmp_path):
    prolora = pytest.importorskip("prolora")
    from peft import get_peft_model

    from eval.backends import VLLMBackend

    calls = _fake_vllm(monkeypatch)
    peft_model = get_peft_model(build_tiny_llama(), prolora.ProLoraConfig(r=4, target_modules=["q_proj"],
                                                                        reduce_lora_A_x=2))
    peft_model.save_pretrained(tmp_path / "adapter")
    backend = VLLMBackend(str(tiny_model_dir), adapter_name_or_path=str(tmp_path / "adapter"))
    assert calls["llm"]["enable_lora"] and calls["llm"]["max_lora_rank"] == 8
    assert calls["llm"]["model"] == str(tiny_model_dir)
    assert calls["lora_config"]["peft_type"] == "LORA" and calls["lora_config"]["r"] == 4
    assert "adapter_model.safetensors" in calls["lora_files"]

    out = backend.generate(["p1", "p2"], 7, temperature=0.5, top_p=0.9, n=2, stop=["\n\n"])
    assert out == [["p1|0", "p1|1"], ["p2|0", "p2|1"]]
    assert calls["sampling"] == {"n": 2, "temperature": 0.5, "top_p": 0.9, "max_tokens": 7, "stop": ["\n\n"]}
    assert calls["lora_request"].int_id == 1
    backend.generate(["p"], 3)
    assert calls["sampling"]["temperature"] == 0.0 and calls["sampling"]["stop"] is None
