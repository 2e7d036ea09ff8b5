"""`prunesearch draft-check`: measure an exported draft with its target (docs/drafts.md, "Running a draft")."""

from __future__ import annotations

import argparse
from pathlib import Path

from prunesearch.cliutil import print_json, user_errors

from .assist import DraftError
from .draftcheck import DraftCheckSettings, check_draft
from .vocab import VocabTrimError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "draft-check",
        help="measure a draft with its target: teacher-forced acceptance, real assisted generation, tokens/s",
    )
    p.add_argument("--target", required=True, type=Path, help="the target model directory")
    p.add_argument("--draft", required=True, type=Path, help="the draft (a prunesearch export of the target)")
    p.add_argument("--data", required=True, type=Path, help="held-out UTF-8 text: acceptance and prompts")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: speculative.json's, else 0)")
    p.add_argument("--lookahead", type=int, help="drafted tokens per round (default: speculative.json's, else 4)")
    p.add_argument("--prompts", type=int, default=4, help="prompts taken from --data")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (figures are medians)")
    p.add_argument("--alpha-tokens", type=int, default=16_384, help="held-out tokens for teacher-forced alpha")
    p.set_defaults(handler=user_errors(DraftError, VocabTrimError)(_draft_check))


def _draft_check(args: argparse.Namespace) -> int:
    settings = DraftCheckSettings(
        temperature=args.temperature,
        lookahead=args.lookahead,
        prompts=args.prompts,
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        alpha_tokens=args.alpha_tokens,
    )
    _check(settings)
    print_json(check_draft(args.target, args.draft, args.data, settings))
    return 0


def _check(settings: DraftCheckSettings) -> None:
    if settings.temperature is not None and settings.temperature < 0:
        raise DraftError(f"--temperature must be >= 0, got {settings.temperature}")
    if settings.lookahead is not None and not 1 <= settings.lookahead <= 8:
        raise DraftError(f"--lookahead must be in 1..8, got {settings.lookahead}")
    for name in ("prompts", "prompt_tokens", "new_tokens", "repeats", "alpha_tokens"):
        if getattr(settings, name) < 1:
            raise DraftError(f"--{name.replace('_', '-')} must be >= 1")
