"""`MosConfig`: MoS (Mixture of Shards, arXiv 2410.00938) hyper-parameters as a PEFT config."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig


class MosPeftType(str, enum.Enum):
    """PEFT's `PeftType` is a closed enum, so this out-of-tree method brings its own str-Enum member."""

    MOS = "MOS"


@dataclass
class MosConfig(PeftConfig):
    """Configuration of a MoS adapter (the rule, shapes and parameter count are in `prolora.mos.rebuild`).

    Every layer computes with LoRA's ``(lora_alpha / r) B A`` at rank ``r``; A and B are assembled from shards of a
    pool that all layers of one projection type share, holding as many numbers as LoRA of rank ``mos_r``. Each
    differentiation strategy of the paper has its own switch, so its ablations can be run.
    """

    r: int = field(default=8, metadata={"help": "Rank of every layer's assembled A and B (the scaling is alpha / r)."})
    mos_r: Optional[int] = field(
        default=None,
        metadata={"help": "R: equivalent LoRA rank of the pool (trainable count = LoRA at rank R); None = r."},
    )
    private_r: int = field(
        default=0, metadata={"help": "p: rank vectors per layer made of private shards (shard privatization; 0 = off)."}
    )
    shards_per_vector: int = field(
        default=1, metadata={"help": "l: shards per rank vector (vector sharding; 1 = whole vectors)."}
    )
    subset_selection: bool = field(
        default=True, metadata={"help": "Each layer draws its shared shards at random (False: all take the same)."}
    )
    pair_dissociation: bool = field(
        default=True, metadata={"help": "Draw B's shards independently of A's (False: B uses A's indices)."}
    )
    global_pool: bool = field(
        default=True, metadata={"help": "One pool per projection type across layers (False: a pool per layer)."}
    )
    lora_alpha: float = field(default=16, metadata={"help": "Scaling numerator: the update is (lora_alpha / r) B A."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout probability on the adapter input."})
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={"help": "Module names (list), a regex (str, full match) or 'all-linear'. None = the model type's "
                  "default from PEFT's LoRA mapping."},
    )
    init_weights: bool = field(
        default=True,
        metadata={"help": "True = the paper's init (B pool zero: the adapter starts as a no-op). False = B pool "
                  "random too (a non-identity adapter, for tests/debugging)."},
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names or a regex to leave untouched."}
    )
    bias: str = field(default="none", metadata={"help": "Only 'none' is supported: MoS trains no biases."})
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Extra modules (e.g. a classifier head) to train fully and save."}
    )
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None, metadata={"help": "Only adapt these layer indices."}
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Name of the nn.ModuleList holding the layers, used with layers_to_transform."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = MosPeftType.MOS
        if self.mos_r is None:  # LoRA's budget at rank r: a default that builds on any model
            self.mos_r = self.r
        for name in ("target_modules", "exclude_modules"):  # PEFT's convention: a list of names becomes a set
            if isinstance(getattr(self, name), list):
                setattr(self, name, set(getattr(self, name)))
        self._validate()

    def _validate(self) -> None:
        def require(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"MosConfig: {message}")

        for name in ("r", "mos_r", "private_r", "shards_per_vector"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool), f"{name} must be an int, got {value!r}")
        require(self.r >= 1, f"r must be >= 1, got r={self.r}")
        require(self.mos_r >= 1, f"mos_r must be >= 1, got mos_r={self.mos_r}")
        require(self.shards_per_vector >= 1, f"shards_per_vector must be >= 1, got {self.shards_per_vector}")
        require(self.private_r >= 0, f"private_r must be >= 0, got private_r={self.private_r}")
        require(self.private_r <= self.r, f"private_r={self.private_r} exceeds r={self.r}")
        require(self.private_r <= self.mos_r, f"private_r={self.private_r} exceeds mos_r={self.mos_r}")
        require(self.private_r < self.mos_r or self.r == self.mos_r,
                f"private_r=mos_r={self.mos_r} leaves no shared shards, so r={self.r} must equal mos_r")
        for name in ("subset_selection", "pair_dissociation", "global_pool", "init_weights"):
            value = getattr(self, name)
            require(isinstance(value, bool), f"{name} must be True or False, got {value!r}")
        require(self.global_pool or self.r <= self.mos_r,
                f"global_pool=False gives each layer a pool of mos_r={self.mos_r} ranks, fewer than r={self.r}")
        require(isinstance(self.lora_dropout, (int, float)) and 0.0 <= self.lora_dropout < 1.0,
                f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        require(self.bias == "none", f"bias must be 'none' (MoS trains no biases), got {self.bias!r}")
