"""GRPOTrainer trains 2 steps from an exported grpo_config.yaml, with the README's FRUGAL trainer subclass.

argv: the export folder. Run in the environment `accelerate launch --config_file accelerate.yaml`
gives the process (test_frugal_routes.py builds it with accelerate's own functions). A tiny Llama
and a word-level tokenizer are built offline. Prints one RESULT line.
"""
import json
import os
import sys
from pathlib import Path

import torch
import transformers
import yaml
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from trl import GRPOConfig, GRPOTrainer

from autotune import schema
from autotune.config import OptimizerConfig, PartitionSpec
from autotune.optim import build_optimizer

folder = Path(sys.argv[1])
vocab = {"<pad>": 0, "<eos>": 1, **{f"w{i}": i + 2 for i in range(62)}}
tok = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")),
                                           pad_token="<pad>", eos_token="<eos>")
tok._tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
torch.manual_seed(0)
fields = yaml.safe_load((folder / "grpo_config.yaml").read_text())
dtype = (fields.get("model_init_kwargs") or {}).get("dtype", "float32")
transformers.LlamaForCausalLM(transformers.LlamaConfig(
    hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, vocab_size=64,
    pad_token_id=0, eos_token_id=1, bos_token_id=1)).save_pretrained(folder / "tiny")
# A local path, from which GRPOTrainer also loads the reference model (with model_init_kwargs).
model = transformers.AutoModelForCausalLM.from_pretrained(folder / "tiny", dtype=getattr(torch, dtype))
if fields.get("deepspeed"):
    fields["deepspeed"] = str(folder / fields["deepspeed"])
args = GRPOConfig(output_dir=str(folder / "out"), report_to="none", max_steps=2, save_strategy="no",
                  use_cpu=os.environ.get("DS_ACCELERATOR") == "cpu",
                  logging_steps=1, **fields)
prompts = Dataset.from_dict({"prompt": [" ".join(f"w{(i * 7 + j) % 62}" for j in range(4)) for i in range(16)]})
reward = lambda completions, **kw: [float(c.count("w3")) for c in completions]  # noqa: E731
trainer_cls = GRPOTrainer
if (folder / "frugal_partition.yaml").is_file():   # the README's FRUGAL route for TRL
    spec = schema.load_yaml(PartitionSpec, folder / "frugal_partition.yaml")

    class FrugalGRPOTrainer(GRPOTrainer):
        # Trainer.create_optimizer is also what DeepSpeed's integration calls; `optimizers=` is dropped there.
        def create_optimizer(self, model=None):
            if self.optimizer is None:
                cfg = OptimizerConfig(name="frugal", weight_decay=self.args.weight_decay, beta1=self.args.adam_beta1,
                                      beta2=self.args.adam_beta2, eps=self.args.adam_epsilon, partition=spec)
                self.optimizer = build_optimizer(self.model, cfg, lr=self.args.learning_rate, frugal=True)
            return self.optimizer

    trainer_cls = FrugalGRPOTrainer
trainer = trainer_cls(model=model, reward_funcs=reward, args=args, train_dataset=prompts, processing_class=tok)
trainer.train()
from tests.export.targets import optimizer_state_summary  # noqa: E402

print("RESULT", json.dumps({"steps": trainer.state.global_step, "deepspeed": trainer.is_deepspeed_enabled,
                            **optimizer_state_summary(trainer.optimizer)}))
