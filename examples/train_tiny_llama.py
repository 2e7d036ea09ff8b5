"""Train the bundled demo model `examples/tiny-llama/`: a tiny Llama (4 layers, hidden 96, 4 heads with 2 KV
heads, MLP 256) with its own byte-level BPE tokenizer (1024 tokens), on the Python documentation, for a few
minutes on CPU.

    python examples/train_tiny_llama.py [--data ../shared/data/pydocs-calib.txt] [--minutes 2.5]

Writes safetensors weights, the tokenizer and `calib.txt` (a small calibration file) next to each other; the
result stays under 3 MB so it can live in git. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "pydocs-calib.txt"
SPECIALS = ["<|endoftext|>", "<|pad|>"]


def train_tokenizer(text: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer; `<|endoftext|>` = 0 (bos/eos), `<|pad|>` = 1."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([text], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIALS[0], eos_token=SPECIALS[0], pad_token=SPECIALS[1]
    )


def build_model(vocab_size: int) -> LlamaForCausalLM:
    """The demo architecture: GQA (4 query heads, 2 KV heads), untied embeddings."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=96,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def train(model: LlamaForCausalLM, ids: torch.Tensor, minutes: float, seq_len: int, batch: int) -> float:
    """AdamW with cosine decay for a fixed wall-clock budget; returns the last smoothed loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    deadline, start, step, smooth = time.monotonic() + minutes * 60, time.monotonic(), 0, float("nan")
    gen = torch.Generator().manual_seed(0)
    model.train()
    while time.monotonic() < deadline:
        frac = (time.monotonic() - start) / (minutes * 60)
        for group in opt.param_groups:
            group["lr"] = 3e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        starts = torch.randint(0, len(ids) - seq_len - 1, (batch,), generator=gen)
        x = torch.stack([ids[s : s + seq_len] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        smooth = loss.item() if math.isnan(smooth) else 0.95 * smooth + 0.05 * loss.item()
        step += 1
        if step % 50 == 0:
            print(f"step {step} loss {smooth:.3f}", flush=True)
    model.eval()
    return smooth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=HERE / "tiny-llama")
    parser.add_argument("--minutes", type=float, default=2.5)
    parser.add_argument("--vocab", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(2)
    text = args.data.read_text(encoding="utf-8")
    tokenizer = train_tokenizer(text, args.vocab)
    ids = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    model = build_model(len(tokenizer))
    loss = train(model, ids, args.minutes, seq_len=128, batch=16)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    # A small calibration file: whole documents (blank-line separated) from the end of the training text.
    (args.out / "calib.txt").write_text(text[-24_000:].split("\n\n", 1)[-1], encoding="utf-8")
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {params / 1e6:.2f}M parameters, {len(ids)} training tokens, final loss {loss:.3f}")


if __name__ == "__main__":
    main()
