"""`TiedLoraConfig`: Tied-LoRA (Renduchintala et al., 2023, arXiv 2311.09578) as a PEFT config."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig


class TiedLoraPeftType(str, enum.Enum):
    """PEFT's `PeftType` is a closed enum, so this out-of-tree method brings its own str-Enum member."""

    TIED_LORA = "TIED_LORA"


@dataclass
class TiedLoraConfig(PeftConfig):
    """Configuration of a Tied-LoRA adapter (the math is in `open_instruct.tied_lora.layer`).

    One low-rank pair A (r x d_in), B (d_out x r) per projection type is shared by every layer; each layer owns two
    scaling vectors u (r) and v (d_out):  dW_l = (lora_alpha / r) * diag(v_l) B diag(u_l) A.
    The ``train_*`` switches pick which of the four factors are trained; all True is the paper's vBuA
    configuration (the one it recommends), ``train_A=train_B=False`` its VeRA-like tied variant.
    """

    r: int = field(default=8, metadata={"help": "Rank of the shared A/B pair."})
    lora_alpha: float = field(default=16, metadata={"help": "Scaling numerator: the update is lora_alpha / r times."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout probability on the adapter input."})
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "Module names (list), a regex (str, full match) or 'all-linear'. None = the model type's "
            "default from PEFT's LoRA mapping."
        },
    )
    train_A: bool = field(default=True, metadata={"help": "Train the shared A (else it stays at its random init)."})
    train_B: bool = field(default=True, metadata={"help": "Train the shared B (else it stays at its random init)."})
    train_u: bool = field(default=True, metadata={"help": "Train the per-layer rank-space vectors u (else all ones)."})
    train_v: bool = field(default=True, metadata={"help": "Train the per-layer output vectors v (else all ones)."})
    init_weights: bool = field(
        default=True,
        metadata={"help": "True = dW starts at zero (one trainable factor zeroed). False = no factor zeroed (a "
                  "non-identity adapter, as PEFT's other methods offer for tests/debugging)."},
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names or a regex to leave untouched."}
    )
    bias: str = field(default="none", metadata={"help": "Only 'none' is supported: Tied-LoRA trains no biases."})
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
        self.peft_type = TiedLoraPeftType.TIED_LORA
        for name in ("target_modules", "exclude_modules"):  # PEFT's convention: a list of names becomes a set
            if isinstance(getattr(self, name), list):
                setattr(self, name, set(getattr(self, name)))
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"TiedLoraConfig: r must be an int >= 1, got r={self.r!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"TiedLoraConfig: lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.bias != "none":
            raise ValueError(f"TiedLoraConfig: bias must be 'none' (Tied-LoRA trains no biases), got {self.bias!r}")
        if not isinstance(self.init_weights, bool):
            raise ValueError(f"TiedLoraConfig: init_weights must be True or False, got {self.init_weights!r}")
        if not (self.train_A or self.train_B or self.train_u or self.train_v):
            raise ValueError("TiedLoraConfig: at least one of train_A, train_B, train_u, train_v must be True")

    @property
    def zero_init_factor(self) -> Optional[str]:
        """The factor initialised to zero so that dW = 0 at step 0: the first trainable one of B, v, u, A
        (None with ``init_weights=False``).

        Zeroing a trainable factor while the other three are non-zero keeps its gradient non-zero, so training
        can start (with everything trainable this is LoRA's rule: B = 0).
        """
        if not self.init_weights:
            return None
        for name in ("B", "v", "u", "A"):
            if getattr(self, f"train_{name}"):
                return name
        raise AssertionError("unreachable: __post_init__ requires a trainable factor")
