"""PRoLoRA and MoS under the stock trainers: TRL's SFTTrainer(peft_config=...) and HF Trainer + get_peft_model.

Each case trains a few steps, saves through the trainer (`save_model`), and checks that the folder holds the compact
adapter only (its tensors are exactly the trainable parameters, which moved) and that
`PeftModel.from_pretrained` on a fresh base rebuilds the trained model bit for bit (same tensors, same logits).
The fast cases use a tiny random Llama with a byte-level tokenizer; the slow ones the packaged SmolLM2-135M.
"""

from __future__ import annotations

import pytest
import torch
from finetune_helpers import VOCAB_SIZE, byte_tokenizer
from helpers.models import make_tiny_llama
from safetensors.torch import load_file

import prolora

trl = pytest.importorskip("trl")

TEXTS = [f"Question {i}: what is {i} plus {i + 1}? Answer: {2 * i + 1}." for i in range(8)]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CONFIGS = {
    "prolora": lambda: prolora.ProLoraConfig(r=4, lora_alpha=8, unshared_r=1, reduce_lora_A_x=2, reduce_lora_B_x=2,
                                             target_modules=TARGETS),
    "mos": lambda: prolora.MosConfig(r=4, mos_r=2, lora_alpha=8, target_modules=TARGETS),
}


def _tiny():
    return make_tiny_llama(vocab_size=VOCAB_SIZE, seed=0), _tokenizer(byte_tokenizer())


def _smollm2(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, _tokenizer(AutoTokenizer.from_pretrained(path))


def _tokenizer(tokenizer):
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _common_args(output_dir) -> dict:
    return dict(output_dir=str(output_dir), max_steps=2, per_device_train_batch_size=2, learning_rate=5e-3,
                report_to="none", use_cpu=True, save_strategy="no", logging_steps=1, seed=0, dataloader_num_workers=0)


def _train_sft(base, tokenizer, config, output_dir):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    # SFTConfig turns bf16 on by default, and accelerate then leaves the trained model's forward under bf16 autocast;
    # fp32 here, so the in-memory model and the reloaded one compute the same way (bf16 training works the same)
    args = SFTConfig(**_common_args(output_dir), max_length=32, bf16=False)
    trainer = SFTTrainer(model=base, args=args, train_dataset=Dataset.from_dict({"text": TEXTS}),
                         processing_class=tokenizer, peft_config=config)
    return trainer


def _train_hf(base, tokenizer, config, output_dir):
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    data = Dataset.from_dict({"text": TEXTS}).map(
        lambda row: tokenizer(row["text"], truncation=True, max_length=32), remove_columns=["text"])
    trainer = Trainer(model=get_peft_model(base, config), args=TrainingArguments(**_common_args(output_dir)),
                      train_dataset=data, data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    return trainer


TRAINERS = {"sft": _train_sft, "trainer": _train_hf}


def _check_round_trip(make_base, method, trainer_name, tmp_path):
    from peft import PeftModel, get_peft_model_state_dict

    base, tokenizer = make_base()
    config = CONFIGS[method]()
    expected_params = prolora.count_adapter_params(make_base()[0], config) if method == "prolora" else None
    trainer = TRAINERS[trainer_name](base, tokenizer, config, tmp_path / "run")
    model = trainer.model
    assert isinstance(model, PeftModel) and model.peft_config["default"].peft_type == config.peft_type
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    trainer.train()
    assert trainer.state.global_step == 2
    trained = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    assert any(not torch.equal(before[name], trained[name]) for name in trained), "no adapter parameter moved"

    folder = tmp_path / "adapter"
    trainer.save_model(str(folder))
    assert not list(folder.glob("model*.safetensors")), "the trainer saved the full model, not the adapter"
    saved = load_file(folder / "adapter_model.safetensors")
    # the trainable tensors and, for MoS, the integer shard-index tables that pick each layer's shards; nothing else
    saved_numel = sum(t.numel() for t in saved.values() if t.is_floating_point())
    assert saved_numel == sum(t.numel() for t in trained.values())
    assert all(t.is_floating_point() or "mos_index" in key for key, t in saved.items())
    if expected_params is not None:
        assert saved_numel == expected_params

    model.eval()
    reloaded = PeftModel.from_pretrained(make_base()[0], str(folder)).eval()
    reloaded_params = dict(reloaded.named_parameters())
    for name, tensor in trained.items():
        assert torch.equal(reloaded_params[name].detach(), tensor), name
    reloaded_state = get_peft_model_state_dict(reloaded)
    assert reloaded_state.keys() == saved.keys()
    assert all(torch.equal(reloaded_state[key], saved[key]) for key in saved)
    ids = tokenizer(TEXTS[:2], return_tensors="pt", padding=True)["input_ids"]
    with torch.no_grad():
        out, again = model(input_ids=ids).logits, reloaded(input_ids=ids).logits
        base_out = make_base()[0](input_ids=ids).logits
    assert torch.equal(out, again)
    assert not torch.allclose(out, base_out)  # the trained adapter changes the output


@pytest.mark.parametrize("trainer_name", sorted(TRAINERS))
@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_tiny_llama_trains_saves_and_reloads(method, trainer_name, tmp_path):
    _check_round_trip(_tiny, method, trainer_name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("trainer_name", sorted(TRAINERS))
@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_smollm2_trains_saves_and_reloads(method, trainer_name, smollm2_path, tmp_path):
    _check_round_trip(lambda: _smollm2(smollm2_path), method, trainer_name, tmp_path)
