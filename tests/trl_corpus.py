"""TRL 1.16's documented DPO cases, kept as data: the command lines, YAML configs and Python snippets of its docs.

Sources (read with the search tool's read_file from the repo huggingface/trl, or from the trl==1.16.0 wheel):
- `trl/scripts/dpo.py` docstring and README.md (in the trl 1.16.0 wheel: scripts/dpo.py, METADATA)
- docs/source/clis.md @ 02fcdef0b3bb, docs/source/peft_integration.md @ 067322f83485,
  docs/source/dpo_trainer.md @ 01b788ce8b74, docs/source/paper_index.md @ 0167b7dfd373,
  examples/cli_configs/example_config.yaml @ 2e736f58dd4c
- DPOConfig / ScriptArguments / DatasetMixtureConfig docstrings (trl 1.16.0: trainer/dpo_config.py,
  scripts/utils.py) for the options the docs name only there (TR-DPO, WPO, LD-DPO, f-DPO, Liger, mixtures)
  The paper_index.md copy read still gives some snippets `max_prompt_length` / `max_completion_length`, which
  TRL 1.16's DPOConfig no longer has (its parser refuses them): they are left out here.
- dpo_vlm.py's command (docs/source/dpo_trainer.md "Training Vision Language Models" and examples/scripts)

Each case: (id, source, kind, body, expect).
  kind "cli": body is the argument list after `trl dpo` / `python trl/scripts/dpo.py` (tilt train takes it as is);
  kind "yaml": body is the YAML file (`trl dpo --config FILE`), plus extra argv in a tuple (yaml, argv);
  kind "python": body is the snippet, run with `from trl import` -> `from tiltlm import` and `load_dataset`
    reading the generated hub cache (a `...` placeholder of the docs is left out).
  expect: "runs"; ("launches", N): re-launched under torchrun with N processes; ("refused", text): one `error:`
  line containing text; ("loss", name) / ("field", name): the case needs a loss / option issue 19b adds, skipped
  until it exists.
The models and datasets are served, under the names the docs use, from a local offline hub cache
(tests/test_trl_corpus.py builds it: a tiny Llama and generated pairs in each dataset's layout).
"""

UF, HH, CAPY, VLM_DATA = ("trl-lib/ultrafeedback_binarized", "anthropic/hh-rlhf", "argilla/Capybara-Preferences",
                          "HuggingFaceH4/rlaif-v_formatted")
MODELS = ("Qwen/Qwen2-0.5B-Instruct", "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen3-0.6B",
          "Qwen/Qwen2-0.5B", "HuggingFaceM4/idefics2-8b", "Qwen/Qwen2.5-VL-3B-Instruct")
DATASETS = (UF, HH, CAPY, VLM_DATA)

DPO_SCRIPT = ["--dataset_name", UF, "--model_name_or_path", "Qwen/Qwen2-0.5B-Instruct", "--learning_rate", "5.0e-7",
              "--num_train_epochs", "1", "--per_device_train_batch_size", "2", "--max_steps", "1000",
              "--gradient_accumulation_steps", "8", "--eval_strategy", "steps", "--eval_steps", "50",
              "--output_dir", "Qwen2-0.5B-DPO", "--no_remove_unused_columns"]
DEEPSPEED = "DeepSpeed is not supported"
VLM = "vision-language (VLM) preference training is not supported"


def paper(loss: str, **options) -> str:
    lines = [f"model_name_or_path: Qwen/Qwen2-0.5B-Instruct", f"dataset_name: {UF}", f"loss_type: {loss}"]
    return "\n".join(lines + [f"{k}: {v}" for k, v in options.items()]) + "\n"


CASES = [
    # --- trl/scripts/dpo.py docstring (trl 1.16.0)
    ("script-full", "trl/scripts/dpo.py", "cli", DPO_SCRIPT, "runs"),
    ("script-peft", "trl/scripts/dpo.py", "cli",
     [*DPO_SCRIPT[:5], "5.0e-6", *DPO_SCRIPT[6:], "--use_peft", "--lora_r", "32", "--lora_alpha", "16"], "runs"),
    # --- README.md (trl 1.16.0)
    ("readme-cli", "README.md", "cli", ["--model_name_or_path", "Qwen/Qwen2.5-0.5B-Instruct", "--dataset_name", CAPY,
                                        "--output_dir", "Qwen2.5-0.5B-DPO"], "runs"),
    ("readme-python", "README.md", "python", f'''
from datasets import load_dataset
from trl import DPOTrainer

dataset = load_dataset("{UF}", split="train")

trainer = DPOTrainer(
    model="Qwen/Qwen3-0.6B",
    train_dataset=dataset,
)
trainer.train()
''', "runs"),
    # --- docs/source/clis.md
    ("clis-basic", "clis.md", "cli", ["--model_name_or_path", "Qwen/Qwen2.5-0.5B", "--dataset_name", HH], "runs"),
    ("clis-yaml", "clis.md", "yaml", f"model_name_or_path: Qwen/Qwen2.5-0.5B\ndataset_name: {HH}\n", "runs"),
    ("clis-num-processes", "clis.md", "cli", ["--model_name_or_path", "Qwen/Qwen2.5-0.5B", "--dataset_name", HH,
                                              "--num_processes", "4"], ("launches", 4)),
    ("clis-num-processes-yaml", "clis.md", "yaml",
     f"model_name_or_path: Qwen/Qwen2.5-0.5B\ndataset_name: {HH}\nnum_processes: 4\n", ("launches", 4)),
    ("clis-accelerate-config", "clis.md", "cli", ["--model_name_or_path", "Qwen/Qwen2.5-0.5B", "--dataset_name", HH,
                                                  "--accelerate_config", "zero2"], ("refused", DEEPSPEED)),
    ("clis-accelerate-config-yaml", "clis.md", "yaml",
     f"model_name_or_path: Qwen/Qwen2.5-0.5B\ndataset_name: {HH}\naccelerate_config: zero2\n",
     ("refused", DEEPSPEED)),
    # --- docs/source/peft_integration.md
    ("peft-cli", "peft_integration.md", "cli",
     ["--model_name_or_path", "Qwen/Qwen2-0.5B-Instruct", "--dataset_name", UF, "--learning_rate", "5.0e-6",
      "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "8", "--use_peft", "--lora_r", "32",
      "--lora_alpha", "16", "--output_dir", "Qwen2-0.5B-DPO-LoRA"], "runs"),
    ("peft-python", "peft_integration.md", "python", f'''
from peft import LoraConfig
from trl import DPOConfig, DPOTrainer

dataset = load_dataset("{UF}", split="train")

# Configure LoRA
peft_config = LoraConfig(
    r=32,
    lora_alpha=16,
    lora_dropout=0.05,
    bias="none",
    task_type="CAUSAL_LM",
)

# Configure training with higher learning rate for LoRA
training_args = DPOConfig(
    learning_rate=5.0e-6,  # 10x the base rate for DPO with LoRA
)

# Create trainer with PEFT config
trainer = DPOTrainer(
    model="Qwen/Qwen2-0.5B",  # can pass model name or loaded model
    args=training_args,
    train_dataset=dataset,
    peft_config=peft_config,  # pass PEFT config here
)
trainer.train()
''', "runs"),
    # --- examples/cli_configs/example_config.yaml (an SFT example; its dataset swapped for preference pairs)
    ("example-config", "examples/cli_configs/example_config.yaml", "yaml",
     ("# env:\n#   CUDA_VISIBLE_DEVICES: 0\n\nmodel_name_or_path:\n  Qwen/Qwen2.5-0.5B\n"
      "dataset_name:\n  stanfordnlp/imdb\n"
      "report_to:\n  none\nlearning_rate:\n  0.0001\nlr_scheduler_type:\n  cosine\n",
      ["--output_dir", "test-dpo", "--dataset_name", UF]), "runs"),
    # --- docs/source/dpo_trainer.md
    ("dpo-quickstart", "dpo_trainer.md", "python", f'''
from trl import DPOTrainer
from datasets import load_dataset

trainer = DPOTrainer(
    model="Qwen/Qwen3-0.6B",
    train_dataset=load_dataset("{UF}", split="train"),
)
trainer.train()
''', "runs"),
    ("dpo-mpo", "dpo_trainer.md", "yaml", paper("[sigmoid, bco_pair, sft]", loss_weights="[0.8, 0.2, 1.0]"), "runs"),
    ("dpo-model-init-kwargs", "dpo_trainer.md", "yaml", paper("sigmoid", model_init_kwargs="{dtype: bfloat16}"),
     "runs"),
    ("dpo-peft-python", "dpo_trainer.md", "python", f'''
from datasets import load_dataset
from trl import DPOTrainer
from peft import LoraConfig

dataset = load_dataset("{UF}", split="train")

trainer = DPOTrainer(
    "Qwen/Qwen3-0.6B",
    train_dataset=dataset,
    peft_config=LoraConfig(),
)

trainer.train()
''', "runs"),
    ("dpo-lora-lr", "dpo_trainer.md", "yaml", paper("sigmoid", learning_rate="1.0e-5"), "runs"),
    ("dpo-vlm-python", "dpo_trainer.md", "python", f'''
from trl import DPOConfig, DPOTrainer
from datasets import load_dataset

trainer = DPOTrainer(
    model="Qwen/Qwen2.5-VL-3B-Instruct",
    args=DPOConfig(max_length=None),
    train_dataset=load_dataset("{VLM_DATA}", split="train"),
)
trainer.train()
''', ("refused", VLM)),
    ("dpo-max-length-none", "dpo_trainer.md", "yaml", paper("sigmoid", max_length="null"), "runs"),
    ("dpo-vlm-script", "dpo_trainer.md / examples/scripts/dpo_vlm.py", "cli",
     ["--dataset_name", VLM_DATA, "--model_name_or_path", "HuggingFaceM4/idefics2-8b",
      "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "32", "--dataset_num_proc", "32",
      "--output_dir", "dpo_idefics_rlaif-v", "--dtype", "bfloat16", "--gradient_checkpointing", "--use_peft",
      "--lora_target_modules=all-linear"], ("refused", VLM)),
    ("dpo-liger", "dpo_trainer.md (Liger Kernel) / DPOConfig", "yaml", paper("sigmoid", use_liger_kernel="true"),
     "runs"),
    # --- docs/source/paper_index.md (DPOConfig snippets, as YAML)
    ("paper-dpo", "paper_index.md", "yaml",
     paper("sigmoid", per_device_train_batch_size=64, learning_rate="1e-6", beta=0.1), "runs"),
    ("paper-ipo", "paper_index.md", "yaml", paper("ipo", per_device_train_batch_size=90, learning_rate="1e-2"),
     "runs"),
    ("paper-slic", "paper_index.md", "yaml", paper("hinge", per_device_train_batch_size=512, learning_rate="1e-4"),
     "runs"),
    ("paper-exo", "paper_index.md", "yaml",
     paper("exo_pair", per_device_train_batch_size=64, learning_rate="1e-6", beta=0.1), "runs"),
    ("paper-nca", "paper_index.md", "yaml",
     paper("nca_pair", per_device_train_batch_size=32, learning_rate="5e-6", beta=0.01), "runs"),
    ("paper-robust", "paper_index.md", "yaml",
     paper("robust", per_device_train_batch_size=16, learning_rate="1e-3", beta=0.01,
           max_length=512, label_smoothing=0.1), "runs"),
    ("paper-bco", "paper_index.md", "yaml",
     paper("bco_pair", per_device_train_batch_size=128, learning_rate="5e-7", beta=0.01), "runs"),
    ("paper-sppo", "paper_index.md", "yaml",
     paper("sppo_hard", per_device_train_batch_size=64, learning_rate="5e-7"), "runs"),
    ("paper-aot", "paper_index.md", "yaml", paper("aot"), ("loss", "aot")),
    ("paper-aot-pair", "paper_index.md", "yaml", paper("aot_pair"), ("refused", "unknown loss_type 'aot_pair'")),
    ("paper-discopop", "paper_index.md", "yaml",
     paper("discopop", per_device_train_batch_size=64, learning_rate="5e-7", beta=0.05, discopop_tau=0.05), "runs"),
    ("paper-apo-zero", "paper_index.md", "yaml",
     paper("apo_zero", per_device_train_batch_size=64, learning_rate="2e-7", beta=0.1), "runs"),
    ("paper-apo-down", "paper_index.md", "yaml",
     paper("apo_down", per_device_train_batch_size=64, learning_rate="2e-7", beta=0.1), "runs"),
    # --- options the DPOConfig / ScriptArguments / DatasetMixtureConfig docstrings document
    ("tr-dpo", "DPOConfig: sync_ref_model", "yaml",
     paper("sigmoid", sync_ref_model="true", ref_model_mixup_alpha=0.6, ref_model_sync_steps=512), "runs"),
    ("wpo", "DPOConfig: use_weighting", "yaml", paper("sigmoid", use_weighting="true"), ("field", "use_weighting")),
    ("ld-dpo", "DPOConfig: ld_alpha", "yaml", paper("sigmoid", ld_alpha=0.5), ("field", "ld_alpha")),
    ("f-dpo", "DPOConfig: f_divergence_type", "yaml",
     paper("sigmoid", f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.5),
     ("field", "f_divergence_type")),
    ("aot-unpaired", "DPOConfig: loss_type", "yaml", paper("aot_unpaired"), ("loss", "aot_unpaired")),
    ("mixture", "DatasetMixtureConfig (scripts/utils.py)", "yaml",
     f"model_name_or_path: Qwen/Qwen2-0.5B-Instruct\ndatasets:\n  - path: {UF}\n    split: train\n"
     f"    columns: [chosen, rejected]\n  - path: {HH}\n    split: train\nstreaming: false\n", "runs"),
    ("dataset-streaming", "ScriptArguments: dataset_streaming", "cli",
     ["--model_name_or_path", "Qwen/Qwen2.5-0.5B", "--dataset_name", HH, "--dataset_streaming"], "runs"),
    # --- values the issue lists (TRL accepts them; from TrainingArguments / ModelConfig)
    ("values-schedule", "TrainingArguments values", "cli",
     ["--model_name_or_path", "Qwen/Qwen2.5-0.5B", "--dataset_name", HH, "--lr_scheduler_type", "cosine_with_min_lr",
      "--lr_scheduler_kwargs", '{"min_lr_rate": 0.1}', "--warmup_steps", "0.1", "--logging_steps", "0.5",
      "--save_steps", "0.5", "--dtype", "auto", "--attn_implementation", "flash_attention_2",
      "--no_gradient_checkpointing", "--report_to", "none"], "runs"),
    ("values-epoch-strategies", "TrainingArguments values", "cli",
     ["--model_name_or_path", "Qwen/Qwen2.5-0.5B", "--dataset_name", HH, "--eval_strategy", "epoch",
      "--save_strategy", "epoch", "--dataset_num_proc", "4", "--use_liger_kernel", "True"], "runs"),
    ("values-tools", "dpo_trainer.md: Tool Calling with DPO (a generated tools dataset)", "cli",
     ["--model_name_or_path", "Qwen/Qwen2.5-0.5B-Instruct", "--dataset_name", "TOOLS_FILE"], "runs"),
]
