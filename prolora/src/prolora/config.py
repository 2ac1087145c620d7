"""`ProLoraConfig`: PRoLoRA's hyper-parameters, with the authors' names, as a PEFT config."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional, Union

from peft.config import PeftConfig

from prolora.rebuild import default_stride


class ProLoraPeftType(str, enum.Enum):
    """PEFT's `PeftType` is a closed enum, so an out-of-tree method brings its own (a str-Enum, as PEFT expects)."""

    PROLORA = "PROLORA"


@dataclass
class ProLoraConfig(PeftConfig):
    """Configuration of a PRoLoRA adapter (see `prolora.rebuild` for the math).

    ``r`` is the full rank of the rebuilt A/B, of which ``unshared_r`` ranks are ordinary LoRA ranks and the other
    ``r - unshared_r`` come from the shared chunks broadcast ``reduce_lora_A_x`` / ``reduce_lora_B_x`` times.
    With ``reduce_lora_A_x = reduce_lora_B_x = 1`` or ``unshared_r = r`` it is plain LoRA.
    """

    r: int = field(default=8, metadata={"help": "Full rank of the adapter (shared + unshared ranks)."})
    lora_alpha: float = field(default=16, metadata={"help": "Scaling numerator: the update is (lora_alpha / r) B A."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout probability on the adapter input."})
    target_modules: Optional[Union[list[str], str]] = field(
        default=None,
        metadata={
            "help": "Module names (list), a regex (str, full match) or 'all-linear'. None = the model type's "
            "default from PEFT's LoRA mapping."
        },
    )
    unshared_r: int = field(default=0, metadata={"help": "u: ranks kept unshared (partially-sharing refinement)."})
    reduce_lora_A_x: int = field(
        default=1, metadata={"help": "m: copies of the A chunk along d_in (A is shrunk m times)."}
    )
    reduce_lora_B_x: int = field(
        default=1, metadata={"help": "n: copies of the B chunk along d_out (B is shrunk n times)."}
    )
    enable_lora_rotation: bool = field(
        default=True, metadata={"help": "Rotate each copy's rank index by k*stride; False gives the CLoRA ablation."}
    )
    lora_A_shift_size: Optional[int] = field(
        default=None, metadata={"help": "Rotation stride for A; None = max(floor((r-u)/m), 1) as the authors."}
    )
    lora_B_shift_size: Optional[int] = field(
        default=None, metadata={"help": "Rotation stride for B; None = max(floor((r-u)/n), 1) as the authors."}
    )
    rectified_init: bool = field(
        default=True,
        metadata={"help": "Kaiming fan = full d_in for A (rectified). False = the chunk width as fan (ablation)."},
    )
    init_weights: bool = field(
        default=True,
        metadata={"help": "True = the paper's init (B parts zero: the adapter starts as a no-op). False = B parts "
                  "random as well (a non-identity adapter, as PEFT's other methods offer for tests/debugging)."},
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names or a regex to leave untouched."}
    )
    bias: str = field(default="none", metadata={"help": "Only 'none' is supported: PRoLoRA trains no biases."})
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
        self.peft_type = ProLoraPeftType.PROLORA
        for name in ("target_modules", "exclude_modules"):  # PEFT's convention: a list of names becomes a set
            if isinstance(getattr(self, name), list):
                setattr(self, name, set(getattr(self, name)))
        self._validate()

    def _validate(self) -> None:
        def require(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"ProLoraConfig: {message}")

        for name in ("r", "unshared_r", "reduce_lora_A_x", "reduce_lora_B_x"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool), f"{name} must be an int, got {value!r}")
        require(self.r >= 1, f"r must be >= 1, got r={self.r}")
        require(self.unshared_r >= 0, f"unshared_r must be >= 0, got unshared_r={self.unshared_r}")
        require(self.unshared_r <= self.r, f"unshared_r={self.unshared_r} exceeds r={self.r}")
        require(self.reduce_lora_A_x >= 1, f"reduce_lora_A_x (m) must be >= 1, got {self.reduce_lora_A_x}")
        require(self.reduce_lora_B_x >= 1, f"reduce_lora_B_x (n) must be >= 1, got {self.reduce_lora_B_x}")
        for name in ("lora_A_shift_size", "lora_B_shift_size"):
            value = getattr(self, name)
            require(value is None or (isinstance(value, int) and value >= 0),
                    f"{name} must be None or >= 0, got {value!r}")
            require(
                value is None or self.enable_lora_rotation,
                f"{name}={value} has no effect with enable_lora_rotation=False",
            )
        require(0.0 <= self.lora_dropout < 1.0, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        require(self.bias == "none", f"bias must be 'none' (PRoLoRA trains no biases), got {self.bias!r}")
        require(isinstance(self.init_weights, bool), f"init_weights must be True or False, got {self.init_weights!r}")

    @property
    def shared_r(self) -> int:
        """r' = r - u: the ranks that come from the shared chunks."""
        return self.r - self.unshared_r

    def strides(self) -> tuple[int, int]:
        """Rotation strides (s_A, s_B) actually used: 0 when rotation is disabled."""
        if not self.enable_lora_rotation:
            return 0, 0
        def stride(shift_size: Optional[int], copies: int) -> int:
            return shift_size if shift_size is not None else default_stride(self.shared_r, copies)

        return (stride(self.lora_A_shift_size, self.reduce_lora_A_x),
                stride(self.lora_B_shift_size, self.reduce_lora_B_x))
