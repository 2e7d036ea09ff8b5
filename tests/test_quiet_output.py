"""What the user's terminal shows: no library warnings from the code paths the demo runs (a heterogeneous pruned
model generating and decoding with a KV cache, schema migrations under the workers' logging), and JSON logs on
request with the ids as fields."""

from __future__ import annotations

import json
import logging
import warnings

import torch

from prunesearch.choices import LogFormat
from prunesearch.pruning.plan import LayerPlan, PrunePlan
from prunesearch.pruning.surgery import apply_plan
from prunesearch.service.db import upgrade_schema
from prunesearch.service.logs import configure_logging
from tests.factories import tiny_model

# Layers of different widths, one without attention, one without MLP: the pruned (remote-code) modeling.
LAYERS = (LayerPlan(heads=8, ffn=48), LayerPlan(heads=0, ffn=20), LayerPlan(heads=4, ffn=0), LayerPlan(heads=8, ffn=9))
HETEROGENEOUS = PrunePlan(layers=LAYERS)


def test_a_heterogeneous_model_generates_and_decodes_without_warnings():
    from prunesearch.profilers.measured import _step

    model = apply_plan(tiny_model("llama"), HETEROGENEOUS)
    assert type(model).__name__ == "PrunedLlamaForCausalLM"
    prompt = torch.tensor([[3, 4, 5, 6]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generated = model.generate(prompt, max_new_tokens=4, do_sample=False)
        token, cache = _step(model, prompt, None)  # the measured profiler's prefill and one decode step
        _step(model, token, cache)
    assert generated.shape == (1, 8)
    assert [str(w.message) for w in caught] == []


def test_lora_adapters_attach_without_warnings():
    from prunesearch.pruning.healloop import with_lora

    model = apply_plan(tiny_model("llama"), HETEROGENEOUS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapted = with_lora(model, rank=2)
    assert any("lora_A" in name for name, _ in adapted.named_parameters())
    assert [str(w.message) for w in caught] == []


def test_migrations_print_nothing_under_the_workers_logging(tmp_path, capfd, restore_logging):
    from prunesearch.search.storage import rdb_storage

    configure_logging(LogFormat.TEXT, "worker")
    url = f"sqlite:///{tmp_path}/service.db"
    upgrade_schema(url)  # `serve` migrates the service's tables
    rdb_storage(url)  # each worker's Optuna storage migrates Optuna's own
    logging.getLogger("prunesearch.test").info("still logging")
    err = capfd.readouterr().err
    assert "still logging" in err
    assert "alembic" not in err.lower() and "Context impl" not in err and "Running upgrade" not in err


def test_json_logs_carry_the_ids_as_fields(capfd, restore_logging):
    configure_logging(LogFormat.JSON, "worker")
    ids = {"job_id": "j-1", "trial": 7, "export_id": "e-2"}
    logging.getLogger("prunesearch.test").info("trial %d finished", 7, extra=ids)
    line = capfd.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["message"] == "trial 7 finished"
    assert record | ids == record
    assert (record["level"], record["role"], record["logger"]) == ("INFO", "worker", "prunesearch.test")
