"""The fine-tuning hyper-parameters, declared once.

`Hyper` holds what `kinject finetune`'s options and a run config's `finetune:` section share —
names, defaults, bounds, help texts — and `TrainConfig` one training run (a learning rate, a
method, a seed, a device on top). Kept apart from `finetune` so reading a config needs no torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kinject.core.errors import KinjectError

Method = Literal["full", "lora"]
MIN_STEPS = 20
"""Fewer optimizer steps than this and a fine-tune has barely moved: its arm says little."""


class Hyper(BaseModel):
    """The fine-tuning hyper-parameters, declared once: `kinject finetune`'s options and a run
    config's `finetune:` section both take these names, defaults, bounds and help texts."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(5, ge=1, description="Epochs (paper: up to 5).")
    block_size: int = Field(256, ge=8, description="Tokens per training block (paper: 256).")
    batch: int = Field(64, ge=1, description="Effective batch in blocks, via gradient accumulation (paper: 64).")
    micro_batch: int = Field(4, ge=1, description="Blocks per forward/backward pass (at most --batch).")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of steps with a linear learning-rate warm-up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    lora_r: int = Field(16, ge=1, description="LoRA rank (--method lora).")
    bf16: bool = Field(False, description="bf16 autocast (GPU, or a CPU with AVX-512 BF16/AMX; refused where "
                                          "bf16 would be emulated).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in the backward pass (less "
                                                            "memory, more time).")
    compile: bool = Field(False, description="torch.compile the model (Accelerate's inductor backend). On 2 CPU "
                                             "cores (AVX512-BF16) bf16 training ran 1.12x and fp32 1.05x the eager "
                                             "tokens/s after a one-off compile (14-25 s with inductor's disk cache, "
                                             "50-75 s cold): worth it for fine-tunes of more than a few minutes.")
    save_every: int = Field(50, ge=1, description="Checkpoint every N optimiser steps (and each epoch).")
    val_fraction: float = Field(0.05, ge=0, lt=1, description="Share of chunks held out for validation loss "
                                                               "(an LR search needs some).")

    @model_validator(mode="after")
    def _micro_within_batch(self) -> Hyper:
        if self.micro_batch > self.batch:
            raise ValueError(f"micro_batch ({self.micro_batch}) must be at most batch ({self.batch}); lower "
                             f"micro_batch or raise batch")
        return self

    def keyed(self, exclude: set[str]) -> dict:
        """The settings that say what a run learns, for its cache key or resume identity, without
        `exclude`: `compile` only when on (a compiled run rounds differently and keys apart; an
        eager one keys as it did before the setting existed, so caches stay valid)."""
        return self.model_dump(exclude=exclude | (set() if self.compile else {"compile"}))

    @classmethod
    def help(cls, name: str) -> str:
        """A hyper-parameter's help text."""
        return cls.model_fields[name].description or ""

    @classmethod
    def default(cls, name: str):
        """A hyper-parameter's default."""
        return cls.model_fields[name].default


class TrainConfig(Hyper):
    """One training run: the hyper-parameters plus its learning rate, method, seed and device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(1e-5, gt=0)
    method: Method = "full"
    seed: int = 0
    device: str = "cpu"
    """A resolved device (`devices.resolve`): cpu, cuda:N or mps; under `accelerate launch`
    each process's own GPU."""

    @classmethod
    def of(cls, hyper: Hyper, **run: object) -> TrainConfig:
        """A run's config from the shared hyper-parameters (a config's `finetune:` section)."""
        return cls(**hyper.model_dump(include=set(Hyper.model_fields)), **run)  # type: ignore[arg-type]

    def check(self, context: int | None) -> None:
        """Every bound (also after `model_copy`, which does not validate), and the block size
        against the model's context; errors name the command-line option."""
        try:
            TrainConfig.model_validate(self.model_dump())
        except ValidationError as exc:
            err = exc.errors()[0]
            name = "--" + "-".join(str(p) for p in err["loc"]).replace("_", "-") if err["loc"] else "--micro-batch"
            value = getattr(self, str(err["loc"][0])) if err["loc"] else None
            if err["loc"] == ("lr",):
                raise KinjectError(f"--lr must be positive, got {value}") from None
            if err["loc"] == ("epochs",):
                raise KinjectError(f"--epochs must be at least 1, got {value}") from None
            msg = err["msg"].removeprefix("Value error, ")
            raise KinjectError(f"{name}: {msg[0].lower() + msg[1:]}" + (f", got {value}" if err["loc"] else "")) \
                from None
        if context is not None and self.block_size > context:
            raise KinjectError(f"--block-size {self.block_size} is beyond the model context ({context} tokens)")
