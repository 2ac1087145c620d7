"""Train a tiny PRoLoRA model a few steps under DeepSpeed ZeRO-3 (launched by tests/test_prolora_zero3.py)."""

import json
import sys

import torch
from accelerate import Accelerator
from peft import get_peft_model

sys.path.insert(0, sys.argv[2])
from helpers.models import make_tiny_llama  # noqa: E402

import prolora as P  # noqa: E402
from open_instruct.peft_methods import LLAMA_PROJECTIONS  # noqa: E402

out = sys.argv[1]
accelerator = Accelerator()
torch.manual_seed(0)
model = get_peft_model(
    make_tiny_llama(hidden_size=72, intermediate_size=98),
    P.ProLoraConfig(r=8, unshared_r=1, reduce_lora_A_x=2, reduce_lora_B_x=3,
                    target_modules=list(LLAMA_PROJECTIONS)),
)
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
data = torch.utils.data.DataLoader(torch.randint(0, 128, (8, 12)), batch_size=4)
model, optimizer, data = accelerator.prepare(model, optimizer, data)
q_A = model.module.base_model.model.model.layers[0].self_attn.q_proj.prolora_A["default"]
losses = []
for _ in range(4):
    for batch in data:
        loss = model(batch, labels=batch).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
state_dict = accelerator.get_state_dict(model)
unwrapped = accelerator.unwrap_model(model)
if accelerator.is_main_process:
    unwrapped.save_pretrained(f"{out}/adapter", state_dict=state_dict)
with torch.no_grad():
    unwrapped.merge_adapter()  # inside gather_params_ctx: the partitioned base weight is gathered for the merge
    unwrapped.unmerge_adapter()
json.dump({"partitioned_shape": list(q_A.shape), "ds_shape": list(getattr(q_A, "ds_shape", [])), "losses": losses},
          open(f"{out}/result.json", "w"))
