"""MoS in the harness: `--peft_method mos` and its flags build a `MosConfig`, the registry's formula agrees with the
instantiated model, the MoS flags are refused for other methods, and the Llama-2-7B figure of the authors' runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

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


# ---- the grid and the summarizer -----------------------------------------------------------------------------

def _mos_grid(tmp_path, **overrides) -> dict:
    """A grid over LoRA and MoS at r=8 on a tiny local checkpoint (the toy data of finetune_helpers)."""
    from finetune_helpers import make_tiny_checkpoint, write_toy_data

    from open_instruct.paper.grid import load_config

    model = make_tiny_checkpoint(tmp_path / "model")
    grid = {"name": "mos_grid", "model": str(model), "output_dir": str(tmp_path / "out"), "seeds": [1],
            "train": {"train_file": str(write_toy_data(tmp_path / "data.jsonl")), "max_seq_length": 48,
                      "per_device_train_batch_size": 4, "learning_rate": 1e-2, "lora_alpha": 16,
                      "max_train_steps": 2, "lora_target_modules": ["q_proj", "v_proj", "up_proj"]},
            "evals": {"asdiv": {"module": "eval.gsm.run_eval", "args": {"data_dir": str(tmp_path / "asdiv")}}},
            "methods": [{"name": "lora", "method": "lora", "r": 8},
                        {"name": "mos", "method": "mos", "r": 8, "lr": [1.0e-2, 2.0e-2]}],
            "summary": {"task": "training"}, **overrides}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    return load_config(tmp_path / "grid.yaml")


def test_a_mos_grid_row_expands_and_passes_the_dry_run(tmp_path, capsys):
    from open_instruct.paper.grid import cell_stages, expand_cells, run_grid

    config = _mos_grid(tmp_path)
    cells = expand_cells(config)
    assert [cell.folder for cell in cells] == ["lora_r8_sd1", "mos_r8_R8p0l1_lr0.01_sd1", "mos_r8_R8p0l1_lr0.02_sd1"]
    assert {cell.label for cell in cells if cell.method == "mos"} == {"MoS"}
    run_grid(config, dry_run=True)  # every command line through its module's parser, flag checks and geometry
    printed = capsys.readouterr().out
    assert printed.count("--peft_method mos") == 2 and not (tmp_path / "out").exists()

    mos = next(cell for cell in cells if cell.method == "mos")
    stages = {s.name: s.command for s in cell_stages(config, mos, tmp_path / "cell", config["model"])}
    assert list(stages) == ["finetune", "merge", "eval_asdiv"]
    args = parse_args(stages["finetune"][3:])
    assert (args.peft_method, args.lora_rank, args.learning_rate, args.seed) == ("mos", 8, 1e-2, 1)
    assert isinstance(build_peft_config(args), __import__("prolora").MosConfig)


def test_a_grid_row_sets_the_mos_settings_by_the_papers_letters(tmp_path):
    """R, p, l (lists expand like r) and the switches become --mos_* flags and part of the folder; they are refused
    on rows of other methods and checked for range."""
    from open_instruct.paper.grid import GridConfigError, cell_stages, expand_cells

    config = {"_source": "grid.yaml", "seeds": [1], "model": "m", "train": {"train_file": "t.jsonl"}, "methods": [
        {"name": "mos", "method": "mos", "r": 8, "R": [2, 4], "p": 1, "l": 4},
        {"name": "mos_nosel", "method": "mos", "r": 8, "R": 2, "subset_selection": False}]}
    cells = expand_cells(config)
    assert [c.folder for c in cells] == ["mos_r8_R2p1l4_sd1", "mos_r8_R4p1l4_sd1", "mos_nosel_r8_R2p0l1_sd1"]
    flags = {c.folder: parse_args(cell_stages(config, c, tmp_path / c.folder, "m")[0].command[3:]) for c in cells}
    first = flags["mos_r8_R2p1l4_sd1"]
    assert (first.mos_r, first.mos_private_r, first.mos_shards_per_vector, first.no_mos_subset_selection) == \
        (2, 1, 4, False)
    assert flags["mos_nosel_r8_R2p0l1_sd1"].no_mos_subset_selection
    config_built = build_peft_config(first)
    assert (config_built.mos_r, config_built.private_r, config_built.shards_per_vector) == (2, 1, 4)
    for row, message in [({"name": "x", "method": "lora", "r": 8, "R": 2}, "only apply to method mos"),
                         ({"name": "x", "method": "mos", "r": 8, "p": -1}, "p must be an integer >= 0"),
                         ({"name": "x", "method": "mos", "r": 8, "l": 0}, "l must be an integer >= 1")]:
        with pytest.raises(GridConfigError, match=message):
            expand_cells({**config, "methods": [row]})


@pytest.mark.slow
def test_a_mos_grid_runs_merges_and_is_summarized_with_its_trainable_params(tmp_path):
    from finetune_helpers import VOCAB_SIZE
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from open_instruct.paper.grid import run_grid

    config = _mos_grid(tmp_path, evals={}, methods=[{"name": "lora", "method": "lora", "r": 8},
                                                    {"name": "mos", "method": "mos", "r": 8}])
    result = run_grid(config)
    assert not result.failures and result.stages_run == 4  # 2 x (finetune, merge)
    out = Path(config["output_dir"])
    # merge_lora's merged MoS model is what the evals make of base + adapter folder (their own loading and merge).
    from eval.backends import load_model_and_tokenizer

    merged = AutoModelForCausalLM.from_pretrained(out / "mos_r8_R8p0l1_sd1" / "merged")
    loaded, _ = load_model_and_tokenizer(config["model"], adapter_name_or_path=str(out / "mos_r8_R8p0l1_sd1"),
                                         device="cpu")
    base = AutoModelForCausalLM.from_pretrained(config["model"])
    ids = torch.randint(0, VOCAB_SIZE, (2, 9))
    with torch.no_grad():  # the pad row finetune added is drawn afresh by each resize: compare the original vocab
        logits = merged(ids).logits[..., :VOCAB_SIZE]
        torch.testing.assert_close(logits, loaded(ids).logits[..., :VOCAB_SIZE], rtol=1e-5, atol=1e-5)
        assert not torch.equal(logits, base(ids).logits)  # the training landed

    def trainable(*flags):  # independent count: the PEFT model the same flags build
        base = AutoModelForCausalLM.from_pretrained(config["model"])
        peft_config = build_peft_config(cli("--lora_rank", "8", "--lora_target_modules", "q_proj", "v_proj",
                                            "up_proj", *flags))
        return get_peft_model(base, peft_config).get_nb_trainable_parameters()[0]

    from open_instruct.paper import summarize

    rows = summarize.summarize_runs([summarize.read_run(p) for p in summarize.find_run_dirs([out])],
                                    summarize.TASKS["training"])
    by_label = {row.label: row for row in rows}
    assert sorted(by_label) == ["LoRA", "MoS"]
    assert by_label["LoRA"].trainable_params == trainable()
    mos = by_label["MoS"]
    assert mos.trainable_params == trainable("--peft_method", "mos")
    assert (mos.hparams["r"], mos.hparams["R"], mos.hparams["p"], mos.hparams["l"]) == (8, 8, 0, 1)
    table = (out / "summary" / "summary_training.md").read_text()
    assert "| MoS |" in table and f"{mos.trainable_params:,}" in table


def test_summarizer_keeps_mos_settings_apart_and_labels_ablations(tmp_path):
    from open_instruct.paper import summarize
    from prolora import MosConfig

    settings = {"mos_R2_p1_l4": dict(mos_r=2, private_r=1, shards_per_vector=4),
                "mos_R4": dict(mos_r=4),
                "mos_R4_ablated": dict(mos_r=4, subset_selection=False, pair_dissociation=False)}
    for folder, kwargs in settings.items():
        run = tmp_path / folder
        run.mkdir()
        MosConfig(r=8, lora_alpha=16, target_modules=["q_proj"], **kwargs).save_pretrained(str(run))
        (run / "all_results.json").write_text(json.dumps({"trainable_params": 1000 * kwargs["mos_r"],
                                                          "train_loss": 1.0}))
        (run / "completed").write_text("")
    markdown = summarize.summarize([tmp_path], "training", tmp_path / "summary")
    assert "| Method | r | R | p | l | alpha |" in markdown
    assert "| MoS | 8 | 2 | 1 | 4 | 16 | 1 | 2,000 |" in markdown
    assert "| MoS | 8 | 4 | 0 | 1 | 16 | 1 | 4,000 |" in markdown
    assert "| MoS w/o subset selection, pair dissociation | 8 | 4 | 0 | 1 | 16 | 1 | 4,000 |" in markdown
