"""The transformers / accelerate internals that llmkit.hf_compat relies on still exist in the installed versions.

If one of these fails after an upgrade, fix llmkit/hf_compat.py: it is the only place that touches them."""

from __future__ import annotations

import inspect
from pathlib import Path

from llmkit import hf_compat


def test_trainer_internals_llmkit_uses_exist(tmp_path):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert hasattr(args, "_n_gpu") and args.n_gpu == args._n_gpu  # n_gpu is the property over it
    hf_compat.use_one_gpu(args)
    assert args.n_gpu == 1
    params = list(inspect.signature(Trainer.evaluation_loop).parameters)
    assert "metric_key_prefix" in params
    assert hf_compat.metric_key_prefix(("dl", "desc", None, None, "test"), {}) == "test"
    assert hf_compat.metric_key_prefix(("dl", "desc"), {"metric_key_prefix": "dev"}) == "dev"
    assert hf_compat.metric_key_prefix(("dl", "desc"), {}) == "eval"
    assert "_train_batch_size" in inspect.getsource(Trainer.__init__)
    assert "_get_train_sampler" in dict(inspect.getmembers(Trainer))
    # training.SeededTrainer overrides the loop's batch fetching and checkpoint steps (exact resume, failed writes)
    assert "self.get_batch_samples(" in inspect.getsource(Trainer)
    assert "self._save_checkpoint(" in inspect.getsource(Trainer._maybe_log_save_evaluate)
    assert "self._save_optimizer_and_scheduler(" in inspect.getsource(Trainer._save_checkpoint)  # tests/crash.py


def test_accelerate_reads_mixed_precision_from_the_environment(monkeypatch):
    import accelerate.state

    source = Path(inspect.getsourcefile(accelerate.state)).read_text()
    assert hf_compat.MIXED_PRECISION_ENV in source
    monkeypatch.setenv(hf_compat.MIXED_PRECISION_ENV, "fp16")
    assert hf_compat.set_launch_precision("bf16") == "fp16"
    import os

    assert os.environ[hf_compat.MIXED_PRECISION_ENV] == "bf16"


FSDP_CHECK = r"""
import os, sys, tempfile, types, copy
import torch, torch.distributed as dist
from transformers import BertConfig, BertForMaskedLM, RobertaConfig, RobertaForMaskedLM
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_model
from torch.distributed.tensor import DTensor
from llmkit.hf_compat import tied_head_in_root_fsdp_group
from llmkit.modeling import MaskedPositionsHead

handle = tempfile.NamedTemporaryFile(delete=False); handle.close(); os.unlink(handle.name)
dist.init_process_group("gloo", init_method=f"file://{handle.name}", rank=0, world_size=1)
sizes = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100,
             max_position_embeddings=64)
for arch, layer in (("bert", "BertLayer"), ("roberta", "RobertaLayer")):
    torch.manual_seed(0)
    model = (BertForMaskedLM(BertConfig(**sizes)) if arch == "bert" else RobertaForMaskedLM(RobertaConfig(**sizes)))
    model.eval()  # no dropout: the sharded model and the plain one must agree
    reference = copy.deepcopy(model)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                            transformer_cls_names_to_wrap=[layer], reshard_after_forward=True,
                                            state_dict_type="FULL_STATE_DICT")
    accelerator = types.SimpleNamespace(state=types.SimpleNamespace(fsdp_plugin=plugin), torch_device_mesh=None,
                                        mixed_precision="no", is_main_process=True, device=torch.device("cpu"))
    ids = torch.randint(5, 100, (2, 8)); labels = ids.clone(); labels[:, ::2] = -100
    index = labels.flatten().ne(-100).nonzero().squeeze(-1)
    if sys.argv[1] == "plain":
        sharded = fsdp2_prepare_model(accelerator, copy.deepcopy(model))
        try:
            sharded(input_ids=ids, labels=labels).loss.backward()
            print(arch, "PLAIN OK")
        except ValueError as e:
            print(arch, "PLAIN FAILS", "shared with a parameter already managed" in str(e))
        continue
    with tied_head_in_root_fsdp_group(model):
        model = fsdp2_prepare_model(accelerator, model)
    for m in (model, reference):
        head = MaskedPositionsHead(m)
        head.positions = index
        loss = torch.nn.functional.cross_entropy(m(input_ids=ids).logits, labels.flatten()[index])
        head.positions = None
        loss.backward()
    full = lambda t: t.full_tensor() if isinstance(t, DTensor) else t
    grads = dict(reference.named_parameters())
    same = all(torch.allclose(full(p.grad), grads[n].grad, atol=1e-6) for n, p in model.named_parameters())
    base = model.bert if arch == "bert" else model.roberta
    head = model.cls.predictions if arch == "bert" else model.lm_head
    tied = base.embeddings.word_embeddings.weight is head.decoder.weight and head.bias is head.decoder.bias
    print(arch, "FIXED", same, tied, model.get_input_embeddings() is base.embeddings.word_embeddings)
dist.destroy_process_group()
"""


def test_fsdp2_keeps_the_tied_masked_lm_head_in_one_group(tmp_path):
    """accelerate's FSDP2 preparation of a BERT/RoBERTa masked LM fails at the first forward (the head's bias is
    tied into two FSDP groups); with the tied head kept in the root group it trains like the plain model. Run on
    the CPU with gloo in one process (CI has no GPU), in a subprocess for its own process group."""
    import os
    import subprocess
    import sys

    script = tmp_path / "fsdp_check.py"
    script.write_text(FSDP_CHECK)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    plain = subprocess.run([sys.executable, str(script), "plain"], capture_output=True, text=True, env=env)
    assert "bert PLAIN FAILS True" in plain.stdout and "roberta PLAIN FAILS True" in plain.stdout, plain.stderr[-2000:]
    fixed = subprocess.run([sys.executable, str(script), "fixed"], capture_output=True, text=True, env=env)
    assert "bert FIXED True True True" in fixed.stdout and "roberta FIXED True True True" in fixed.stdout, \
        fixed.stdout + fixed.stderr[-2000:]


def test_every_private_name_in_the_fence_exists_and_only_the_fence_names_them(tmp_path):
    """Each name of hf_compat.PRIVATE_NAMES is where hf_compat reads it; no other module of llmkit names one."""
    import importlib
    import io
    import tokenize

    from transformers import TrainingArguments

    for dotted in hf_compat.PRIVATE_NAMES:
        module, owner, name = dotted.split(".")
        cls = getattr(importlib.import_module(module), owner)
        if name == "_n_gpu":  # an instance attribute
            assert hasattr(TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"), name)
        elif name == "_train_batch_size":  # set by the Trainer as it trains
            assert "self._train_batch_size =" in inspect.getsource(cls), dotted
        elif name == "_fingerprint":
            assert isinstance(cls.from_dict({"a": [1]})._fingerprint, str)
        else:
            assert hasattr(cls, name), dotted
    package, names = Path(hf_compat.__file__).parent, {d.rsplit(".", 1)[1] for d in hf_compat.PRIVATE_NAMES}
    outside = [f"{p.relative_to(package)}:{t.start[0]}" for p in package.rglob("*.py") if p.name != "hf_compat.py"
               for t in tokenize.generate_tokens(io.StringIO(p.read_text(encoding="utf-8")).readline)
               if (t.type == tokenize.NAME and t.string in names)  # code, or getattr(x, "name"); not prose
               or (t.type == tokenize.STRING and t.string.strip("'\"") in names)]
    assert not outside, outside


def test_the_trainer_calls_the_hooks_llmkit_overrides(tmp_path):
    """TrainerHooks' forwards are what the Trainer calls when it builds its data loaders."""
    import torch
    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    calls = []

    class Probe(hf_compat.TrainerHooks, Trainer):
        def train_sampler(self, default, dataset):
            calls.append(("train", type(default).__name__, len(dataset)))
            return torch.utils.data.SequentialSampler(dataset)

        def eval_sampler(self, default, dataset):
            calls.append(("eval", len(dataset)))
            return default

    data = Dataset.from_dict({"input_ids": [[1, 2, 3]] * 6, "labels": [0, 1] * 3})
    model = BertForSequenceClassification(BertConfig(vocab_size=8, hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=1, intermediate_size=8))
    trainer = Probe(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
                    train_dataset=data, eval_dataset=data.select(range(4)))
    assert isinstance(trainer.get_train_dataloader().sampler, torch.utils.data.SequentialSampler)
    trainer.get_eval_dataloader()
    assert calls == [("train", "RandomSampler", 6), ("eval", 4)]
    assert hf_compat.prepare_inputs(trainer, {"x": torch.ones(1)})["x"].device.type == "cpu"
    assert sorted(hf_compat.no_split_modules(model)) == ["BertEmbeddings", "BertLayer"]
    assert hf_compat.attention_flags(type(model))["sdpa"] is True
