"""MoS in the harness: `--peft_method mos` and its flags build a `MosConfig`, the registry's formula agrees with the
instantiated model, the MoS flags are refused for other methods, and the Llama-2-7B figure of the authors' runs."""

from __future__ import annotations

import pytest
import torch

from open_instruct.finetune import parse_args
from open_instruct.paper import params
from open_instruct.peft_methods import METHODS, MOS_SETTINGS, build_peft_config, method_for_peft_type


def cli(*extra: str):
    return parse_args(["--model_name_or_path", "m", "--train_file", "t", "--output_dir", "o", "--use_lora", *extra])


def test_peft_method_mos_builds_a_mos_config_from_its_flags():
    from prolora import MosConfig

    config = build_peft_config(cli("--peft_method", "mos", "--lora_rank", "8", "--mos_r", "2", "--mos_private_r",
                                   "1", "--mos_shards_per_vector", "4", "--no_mos_pair_dissociation"))
    assert isinstance(config, MosConfig) and method_for_peft_type(config.peft_type) is METHODS["mos"]
    assert (config.r, config.mos_r, config.private_r, config.shards_per_vector) == (8, 2, 1, 4)
    assert (config.subset_selection, config.pair_dissociation, config.global_pool) == (True, False, True)
    defaults = build_peft_config(cli("--peft_method", "mos", "--lora_rank", "4"))
    assert defaults.mos_r == 4 and defaults.private_r == 0 and defaults.shards_per_vector == 1


def test_mos_settings_spelled_as_the_config_fields():
    from prolora import MosConfig

    fields = MosConfig.__dataclass_fields__
    for setting in MOS_SETTINGS:
        assert setting.field in fields and fields[setting.field].default == setting.default
        assert hasattr(cli(), setting.flag)


@pytest.mark.parametrize("flag", ["--mos_r=2", "--no_mos_global_pool", "--mos_shards_per_vector=2"])
def test_mos_flags_are_refused_for_other_methods(flag):
    with pytest.raises(ValueError, match="only applies to --peft_method mos, not prolora"):
        build_peft_config(cli("--peft_method", "prolora", flag))


def test_bad_mos_values_end_with_one_line(capsys):
    with pytest.raises((SystemExit, ValueError)) as err:
        build_peft_config(cli("--peft_method", "mos", "--lora_rank", "4", "--mos_r", "2", "--mos_private_r", "3"))
    message = str(err.value) + capsys.readouterr().err
    assert "private_r=3" in message


@pytest.mark.parametrize("spec,flags", [
    ("mos:R=2:p=1:l=3", ["--mos_r", "2", "--mos_private_r", "1", "--mos_shards_per_vector", "3"]),
    ("mos:mos_r=3:shards_per_vector=5", ["--mos_r", "3", "--mos_shards_per_vector", "5", "--no_mos_global_pool"]),
    ("mos", []),
])
def test_registry_formula_matches_the_instantiated_model(tiny_llama, spec, flags):
    from peft import get_peft_model

    model = tiny_llama(hidden_size=48, intermediate_size=70, num_layers=3)
    dims = params.ModelDims.from_config(model.config.to_dict())
    config = build_peft_config(cli("--peft_method", "mos", "--lora_rank", "3", *flags))
    torch.manual_seed(0)
    trainable, _ = get_peft_model(model, config).get_nb_trainable_parameters()
    assert trainable == params.count_params(dims, params.parse_method_spec(spec, 3))


def test_llama2_7b_figure_of_the_authors_runs():
    # model_param_summary.txt of github.com/Forence1999/MoS (commit 612a314): "trainable params: 4,997,120" for
    # MoS on all seven projections of Llama-2-7B at lora_r 8..64 with an equivalent rank of 2.
    dims = params.BUILTIN_MODELS["llama2-7b"]
    for r in (8, 16, 32, 64):
        assert params.count_params(dims, params.parse_method_spec("mos:R=2:p=1:l=4", r)) == 4_997_120
    assert params.parse_method_spec("mos:R=2:p=1:l=4", 8).label == "MoS (R=2, p=1, l=4)"
    with pytest.raises(ValueError, match="bad method option"):
        params.parse_method_spec("mos:u=1", 8)
    with pytest.raises(ValueError, match="invalid hyper-parameters for mos"):
        params.parse_method_spec("mos:R=2:p=2", 8)


def test_serve_exports_a_mos_adapter_as_an_exact_lora(tmp_path):
    from helpers.models import make_tiny_llama
    from peft import PeftModel, get_peft_model

    from open_instruct import serve
    from prolora import MosConfig

    make_tiny_llama(hidden_size=40, intermediate_size=50, num_layers=3).save_pretrained(tmp_path / "base")
    torch.manual_seed(0)
    model = get_peft_model(make_tiny_llama(hidden_size=40, intermediate_size=50, num_layers=3),
                           MosConfig(r=4, mos_r=2, shards_per_vector=3, target_modules=["q_proj", "down_proj"],
                                     init_weights=False))
    model.peft_config["default"].base_model_name_or_path = str(tmp_path / "base")
    model.save_pretrained(tmp_path / "mos")
    adapter = serve.inspect_adapter("mos", tmp_path / "mos", str(tmp_path / "base"))
    out = serve.export_servable(str(tmp_path / "base"), [adapter], cache_dir=tmp_path / "cache")["mos"]
    lora = PeftModel.from_pretrained(make_tiny_llama(hidden_size=40, intermediate_size=50, num_layers=3), out)
    ids = torch.randint(0, 128, (2, 5))
    assert lora.peft_config["default"].peft_type == "LORA"
    torch.testing.assert_close(lora.eval()(ids).logits, model.eval()(ids).logits, rtol=1e-5, atol=1e-5)
