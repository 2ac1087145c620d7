"""MoS (Mixture of Shards, Wang et al., ICLR 2025, arXiv 2410.00938): the same authors' cross-layer sharing.

The rule is in `prolora.mos.rebuild`; `MosConfig`, `MosModel` and the layer follow PEFT's split as PRoLoRA does.
Importing `prolora` registers the PEFT type ``MOS``.
"""

from prolora.mos.config import MosConfig, MosPeftType
from prolora.mos.export import export_mos_as_lora
from prolora.mos.layer import Linear, MosLayer
from prolora.mos.model import MosModel, count_mos_params
from prolora.mos.rebuild import assemble_A, assemble_B, pool_params, select_indices

__all__ = ["Linear", "MosConfig", "MosLayer", "MosModel", "MosPeftType", "assemble_A", "assemble_B",
           "count_mos_params", "export_mos_as_lora", "pool_params", "select_indices"]
