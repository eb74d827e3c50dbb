"""The run folder as a model a user can ship: README.md, a Hugging Face model card beside the final weights.

Its YAML front-matter (huggingface_hub's ModelCardData) carries library_name, tags and base_model, so the Hub
shows it right after `push_to_hub` / `huggingface-cli upload`; the body says what was trained on what, with which
loss, how it ended (final train and eval metrics, the doctor's findings) and how to run it again.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional

import yaml

from ..rundir import DATA_STATS, DOCTOR, METRICS, MODEL_CARD, RunDir, is_eval_record

SHOWN = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen",
         "logps/rejected", "kl_proxy")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def tiltlm_version() -> str:
    try:
        return version("tiltlm")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0.0.0+unknown"


def hub_id(name: Optional[str]) -> Optional[str]:
    """`name` when it is a Hub repo id (owner/name, not a local path): only those belong in the metadata."""
    if name and _REPO_ID.match(name) and not Path(name).expanduser().exists():
        return name
    return None


def model_card(*, config: dict, records: list[dict], data_stats: dict, findings: list[dict], base_model: str,
               data: str, eval_label: Optional[str], adapter: bool, command: Optional[str]) -> str:
    """The text of README.md (front-matter + body) for a run with these files."""
    from huggingface_hub import ModelCard, ModelCardData

    losses = list(config.get("loss_type") or [])
    meta = ModelCardData(library_name="peft" if adapter else "transformers", pipeline_tag="text-generation",
                         base_model=hub_id(base_model), datasets=[hub_id(data)] if hub_id(data) else None,
                         tags=["tiltlm", "dpo", "preference-optimization", *losses] + (["lora"] if adapter else []),
                         model_name=Path(str(config.get("output_dir") or "model")).name)
    train = next((r for r in reversed(records) if not is_eval_record(r) and "loss" in r), {})
    evals = next((r for r in reversed(records) if is_eval_record(r)), {})
    weights = config.get("loss_weights") or [1.0] * len(losses)
    eval_data = eval_label or (f"{config['eval_split']:g} of the data, held out" if config.get("eval_split")
                               else "none")
    loss = " + ".join(f"{w:g}·{name}" if len(losses) > 1 else name for w, name in zip(weights, losses))
    lines = [
        f"# {meta.model_name}", "",
        f"Trained with [tiltlm](https://pypi.org/project/tiltlm/) {tiltlm_version()} by preference optimisation "
        f"(`{loss}`, β = {config.get('beta')}) from **{base_model}** on **{data}**."
        + (" This folder holds a LoRA adapter (peft)." if adapter else ""), "",
        "## Training", "",
        "| | |", "| --- | --- |",
        f"| base model | {base_model} |",
        f"| data | {data}: {data_stats.get('valid', '?')} pairs used of {data_stats.get('rows', '?')} "
        f"({data_stats.get('skipped', 0)} skipped, {data_stats.get('truncated', 0)} truncated; "
        f"{data_stats.get('format', '?')}) |",
        f"| eval data | {eval_data} |",
        f"| loss | `{loss}`, beta {config.get('beta')}, label smoothing {config.get('label_smoothing')} |",
        f"| optimisation | learning rate {config.get('learning_rate')} ({config.get('lr_scheduler_type')}), "
        f"{config.get('per_device_train_batch_size')} pairs x {config.get('gradient_accumulation_steps')} "
        f"accumulation per device, max_length {config.get('max_length')}, seed {config.get('seed')} |",
        f"| steps | {train.get('step', '?')} ({train.get('pairs_seen', '?')} pairs seen) |", "",
        "## Final metrics", "",
        "| metric | train (last logging window) | eval |", "| --- | --- | --- |",
        *[f"| {k} | {_num(train.get(k))} | {_num(evals.get('eval/' + k))} |" for k in SHOWN
          if k in train or "eval/" + k in evals], "",
        "## DPO doctor", "",
        *([f"- **{f['check']}** ({f['severity']}, step {f['step']}): {f['message']} Fix: {f['fix']}"
           for f in findings] or ["No findings."]), "",
        "## Reproduce", "",
        *(["```bash", command, "```", ""] if command else []),
        "The exact options (`config.yaml` in this folder; " + (
            "`tilt train --config config.yaml` runs them again):" if config.get("data") else
            "the model or data were handed over in Python: pass them to `tiltlm.train` again with these):"), "",
        "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", "",
        "## Use", "",
        "```python",
        *(["from peft import AutoPeftModelForCausalLM", "model = AutoPeftModelForCausalLM.from_pretrained(PATH)"]
          if adapter else ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                           "model = AutoModelForCausalLM.from_pretrained(PATH)"]),
        "tokenizer = AutoTokenizer.from_pretrained(PATH)" if not adapter else
        "from transformers import AutoTokenizer; tokenizer = AutoTokenizer.from_pretrained(PATH)",
        "```", "",
    ]
    return str(ModelCard(f"---\n{meta.to_yaml()}\n---\n\n" + "\n".join(lines)))


def write_model_card(run: RunDir, config: dict, *, base_model: str, data: str, eval_label: Optional[str],
                     adapter: bool, command: Optional[str]) -> None:
    """README.md from the run folder's own files (metrics.jsonl, data_stats.json, doctor.jsonl)."""
    run.write_text(MODEL_CARD, model_card(config=config, records=run.read_records(METRICS) or [],
                                          data_stats=run.read_json(DATA_STATS) or {},
                                          findings=run.read_records(DOCTOR) or [], base_model=base_model,
                                          data=data, eval_label=eval_label, adapter=adapter, command=command))


def _num(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else ""
