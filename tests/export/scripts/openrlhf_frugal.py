"""OpenRLHF's own DeepspeedStrategy builds the actor engine from the exported flags, with the FRUGAL hook.

argv: the export folder. The actor config is built as openrlhf/trainer/ray/ppo_actor.py does
(`actor_cfg = dict(optim=..., adam=vars(args.actor.adam), ...)`) and handed to `strategy.prepare`.
Prints one RESULT line.
"""
import json
import os
import sys
from pathlib import Path

import torch
import transformers

from tests.export.targets import openrlhf_parse, optimizer_state_summary
from tests.export.test_targets import OPENRLHF_SITE_FLAGS

folder = Path(sys.argv[1])
argv = [tok for line in (folder / "openrlhf.args").read_text().splitlines()
        if line and not line.startswith("#") for tok in line.split()]
args, strategy = openrlhf_parse(argv + OPENRLHF_SITE_FLAGS)

os.environ["AUTOTUNE_FRUGAL_PARTITION"] = str(folder / "frugal_partition.yaml")
from autotune.export.openrlhf_hook import install  # noqa: E402  (what the Ray worker setup hook runs)

install()
from openrlhf.models import Actor  # noqa: E402

torch.manual_seed(0)
dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.ds.param_dtype]
hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
    hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, vocab_size=64)).to(dtype)
actor = Actor(hf)
actor_cfg = dict(optim=args.actor.optim, muon=vars(args.actor.muon), adam=vars(args.actor.adam),
                 lr_scheduler=args.actor.lr_scheduler, lr_warmup_ratio=args.actor.lr_warmup_ratio,
                 min_lr_ratio=args.actor.min_lr_ratio, max_norm=args.actor.max_norm, scheduler_steps=10)
actor, optimizer, _ = strategy.prepare((actor, actor_cfg))
engine = actor.model
ids = torch.randint(0, 64, (2, 8))
engine.backward(engine(ids).logits.float().mean())
engine.step()
print("RESULT", json.dumps({"stage": engine.zero_optimization_stage(), "offload": engine.zero_cpu_offload(),
                            **optimizer_state_summary(optimizer)}))
