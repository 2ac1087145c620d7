"""MoS under DeepSpeed ZeRO-3 (one CPU process, launched by tests/test_mos_zero3.py).

Writes to ``argv[1]``: ``reference_grads.pt`` (the pools' gradients of one step without DeepSpeed), ``zero3_grads.pt``
(the same step under ZeRO-3, gathered), ``adapter/`` (the compact adapter saved after a few steps),
``trained_pools.pt`` (the pools gathered after those steps), ``export/`` (the adapter exported as LoRA while
partitioned), and ``result.json`` (the pools' partitioned shapes and the losses).
"""

import copy
import json
import sys

import torch
from accelerate import Accelerator
from deepspeed.utils import safe_get_full_grad
from peft import get_peft_model
from peft.utils.integrations import gather_params_ctx

sys.path.insert(0, sys.argv[2])
from helpers.models import make_tiny_llama  # noqa: E402

import prolora as P  # noqa: E402
from open_instruct.peft_methods import LLAMA_PROJECTIONS  # noqa: E402

out = sys.argv[1]
accelerator = Accelerator()
torch.manual_seed(0)
model = get_peft_model(
    make_tiny_llama(hidden_size=72, intermediate_size=98),
    P.MosConfig(r=4, mos_r=3, private_r=1, shards_per_vector=3, lora_dropout=0.1, init_weights=False,
                target_modules=list(LLAMA_PROJECTIONS)),
)
model.train()
batch = torch.randint(0, 128, (4, 12), generator=torch.Generator().manual_seed(1))


def pools(peft_model):
    tuner = peft_model.base_model
    return {f"{part}.{group}": param for part in ("mos_pool_A", "mos_pool_B")
            for group, param in getattr(tuner, part)["default"].items()}


# One step without DeepSpeed on a copy (the fused path), then the same step (same seed: same dropout) under ZeRO-3.
reference = copy.deepcopy(model)
torch.manual_seed(2)
reference(batch, labels=batch).loss.backward()
torch.save({name: p.grad.clone() for name, p in pools(reference).items()}, f"{out}/reference_grads.pt")

optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
data = torch.utils.data.DataLoader(torch.randint(0, 128, (8, 12)), batch_size=4)
model, optimizer, data = accelerator.prepare(model, optimizer, data)
unwrapped = accelerator.unwrap_model(model)
torch.manual_seed(2)
accelerator.backward(model(batch, labels=batch).loss)
torch.save({name: safe_get_full_grad(p).clone() for name, p in pools(unwrapped).items()}, f"{out}/zero3_grads.pt")
optimizer.zero_grad()

q_pool = pools(unwrapped)["mos_pool_A.q_proj_out72_in72"]
losses = []
for _ in range(4):
    for step_batch in data:
        loss = model(step_batch, labels=step_batch).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
state_dict = accelerator.get_state_dict(model)
if accelerator.is_main_process:
    unwrapped.save_pretrained(f"{out}/adapter", state_dict=state_dict)
trained = pools(unwrapped)
with gather_params_ctx(list(trained.values())):
    torch.save({name: p.detach().clone() for name, p in trained.items()}, f"{out}/trained_pools.pt")
    P.export_mos_as_lora(unwrapped, f"{out}/export")  # assembles every layer from the gathered pools
with torch.no_grad():
    unwrapped.merge_adapter()  # inside gather_params_ctx: the partitioned base weight and pools are gathered
    unwrapped.unmerge_adapter()
json.dump({"partitioned_shape": list(q_pool.shape), "ds_shape": list(getattr(q_pool, "ds_shape", [])),
           "losses": losses}, open(f"{out}/result.json", "w"))
