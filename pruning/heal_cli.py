"""`prunesearch heal`: distil a pruned checkpoint from its dense model (see docs/heal.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from prunesearch.choices import DType, HealMethod, values
from prunesearch.cliutil import CLIError, print_json, user_errors

from .assist import DraftError
from .calibration import CalibrationError
from .export import SPECULATIVE_FILE, DeviceError
from .healdata import HealDataError
from .healio import HealInputError
from .healsettings import EVAL_CHARS, HealError, HealProgress, HealSettings
from .healstate import HealStateError

# The heal's input errors: bad settings, not an export, mismatched tokenizers, too little data, a foreign state,
# a device this machine lacks.
INPUT_ERRORS = (HealError, HealInputError, HealDataError, HealStateError, CalibrationError, DeviceError, DraftError)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("heal", help="recover a pruned checkpoint by distillation from the dense model")
    p.add_argument("--model", required=True, type=Path, help="pruned checkpoint (written by prunesearch prune)")
    p.add_argument("--teacher", required=True, type=Path, help="the dense checkpoint it was pruned from")
    p.add_argument("--data", required=True, type=Path, help=".txt, .jsonl (text) or chat .jsonl (messages)")
    p.add_argument("--out", required=True, type=Path, help="healed checkpoint directory")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--tokens", type=int, help="training tokens (default 1,000,000)")
    budget.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--method", choices=values(HealMethod), default=HealMethod.FULL.value)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-4 full, 1e-3 lora)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--ce-weight", type=float, default=0.0, help="weight of cross-entropy in the loss, 0..1")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--self-data", type=int, default=0, metavar="N", help="tokens of teacher-written text to add")
    p.add_argument(
        "--self-data-temperature", type=float, default=1.0, metavar="T",
        help="the teacher's sampling temperature for self-data (default 1; 0 decodes greedily, for greedy drafts)",
    )  # fmt: skip
    p.add_argument("--dtype", choices=values(DType), help="of the healed checkpoint (default: the input's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--eval", nargs="+", default=[], type=Path, metavar="FILE", help="perplexity before/after")
    p.add_argument("--eval-chars", type=int, default=EVAL_CHARS)
    p.add_argument(
        "--acceptance-eval", type=Path, metavar="FILE",
        help="held-out text: a draft's teacher-forced acceptance before/after (default with speculative.json: --data)",
    )  # fmt: skip
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="N", help="save resumable state every N steps")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=user_errors(*INPUT_ERRORS)(_heal))


def _heal(args: argparse.Namespace) -> int:
    if not args.model.is_dir():
        raise CLIError(f"model directory {args.model} does not exist")
    settings = HealSettings(
        method=HealMethod(args.method),
        tokens=args.tokens,
        steps=args.steps,
        lr=args.lr,
        seq_len=args.seq_len,
        batch=args.batch,
        grad_accum=args.grad_accum,
        temperature=args.temperature,
        ce_weight=args.ce_weight,
        lora_rank=args.lora_rank,
        gradient_checkpointing=args.gradient_checkpointing,
        self_data_tokens=args.self_data,
        self_data_temperature=args.self_data_temperature,
        seed=args.seed,
        dtype=DType(args.dtype) if args.dtype else None,
        device=args.device,
        checkpoint_every=args.checkpoint_every,
        eval_chars=args.eval_chars,
    )
    acceptance_eval = _acceptance_eval(args)
    with _ProgressBar() as bar:
        if acceptance_eval is None:
            from .heal import heal  # the training stack (peft through transformers' trainer utils) loads only to heal

            result = heal(args.model, args.teacher, args.data, args.out, settings, eval_files=args.eval, progress=bar)
            print_json(result.to_dict())
            return 0
        from .healdraft import heal_draft

        result, acceptance = heal_draft(
            args.model, args.teacher, args.data, args.out, settings,
            acceptance_eval=acceptance_eval, eval_files=args.eval, progress=bar,
        )  # fmt: skip
    print_json(result.to_dict() | {"acceptance": acceptance})
    return 0


def _acceptance_eval(args: argparse.Namespace) -> Path | None:
    """Where to measure a draft's acceptance: --acceptance-eval, or for a draft export (speculative.json) the
    heal's own --data when it is plain text; None: not a draft heal."""
    if args.acceptance_eval is not None:
        if not args.acceptance_eval.is_file():
            raise CLIError(f"--acceptance-eval {args.acceptance_eval}: file not found")
        return args.acceptance_eval
    if (args.model / SPECULATIVE_FILE).is_file() and args.data.suffix.lower() == ".txt":
        return args.data
    return None


class _ProgressBar:
    """A tqdm bar (on stderr) fed by heal's progress callback."""

    def __enter__(self) -> _ProgressBar:
        self.bar = None
        return self

    def __call__(self, progress: HealProgress) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=progress.total_steps, initial=progress.step - 1, desc="heal", unit="step")
        self.bar.update(progress.step - self.bar.n)
        self.bar.set_postfix(loss=f"{progress.loss:.4f}", tok_s=f"{progress.tokens_per_second:,.0f}")

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
