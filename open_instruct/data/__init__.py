"""Training data, from raw sources to the tokens finetune trains on; none of it imports the method.

* `convert` — raw instruction-tuning sources (official layouts) -> open-instruct's ``messages`` jsonl, byte for byte
  as upstream's converters, with its prompt `templates` (the weighted instruction/input/output phrasings);
* `offline` — real training and eval sets built from data that ships inside registry packages (ASDiv, MMLU,
  HumanEval, BIG-bench), for machines with no dataset host;
* `mix` — several jsonl files into one, N records of each, in a fixed shuffled order;
* `validate` — the record rules and their ``file:line`` errors, which finetune applies as it reads;
* `encoding` — one record -> ``input_ids`` / ``labels`` in the Tulu chat layout (only assistant turns trained on).

The commands keep open-instruct's names, each a small module beside this package:
``python -m open_instruct.reformat_datasets`` (`convert`), ``python -m open_instruct.offline_data`` (`offline`),
``python -m open_instruct.mix_jsonl`` (`mix`), ``python -m open_instruct.validate_data`` (`validate`).
The packaged model and the asset cache (`open_instruct.offline_assets`) stay outside: serving, the token cache and
the paper tools use them too, and a model is not training data.
"""
