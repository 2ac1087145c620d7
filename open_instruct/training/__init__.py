"""The parts of ``open_instruct.finetune``, one role per module (the entry point reads them in this order).

* `args` — the command line: open-instruct's flags, the PRoLoRA authors' spellings, their validation (no torch);
* `inputs` — the files the flags name (model config, data, resume target, output folder), checked before loading;
* `model` — base model and tokenizer (QLoRA's 4-bit base), the PEFT wrap, the optimizer;
* `data` — records -> tokenised datasets through the token cache -> batches;
* `loop` — the schedule, the training loop and the held-out evaluation;
* `checkpoints` — manifests, resume, and the atomic swap of the final output folder.

and the pieces only training uses: `trainer_flags` (the authors' HF-Trainer spellings rewritten to finetune's),
`token_cache` (tokenised datasets cached on disk), `length_sampler` (length-grouped batches), `label_loss` (the LM
head applied only where there is a label; held-out loss and token accuracy).
"""
