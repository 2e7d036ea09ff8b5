"""Model fingerprints name a model by its config and weights, not by where it was loaded from."""

import shutil

import torch
import transformers

from prunesearch.pruning.stats import model_fingerprint

from .factories import TINY_CONFIGS


def test_a_moved_checkpoint_keeps_its_fingerprint_and_a_changed_one_does_not(tmp_path):
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(TINY_CONFIGS["llama"]()).save_pretrained(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    a = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    b = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    assert a.config._name_or_path != b.config._name_or_path
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b.lm_head.weight[0, 0] += 1.0
    assert model_fingerprint(a) != model_fingerprint(b)
