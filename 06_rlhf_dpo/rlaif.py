"""RLAIF: the SFT model answers each prompt twice, an AI judge labels which answer is better, DPO learns from that.

    python 06_rlhf_dpo/rlaif.py --run runs/tiny                # needs runs/tiny/rm/ (the judge)

Reads runs/<name>/sft/ (05), rm/ (reward_model.py), the prompts of data/tasks/preference_train.jsonl and
the held-out pairs (01), and the sft files' short answers (for the ground-truth agreement); writes
runs/<name>/rlaif/: ckpt.pt, pairs.jsonl (the self-labelled pairs), outcome.json, metrics.jsonl,
rlaif.png, manifest.json.

1. Two answers per training prompt, sampled from the SFT model at temperature 1 (pairs whose two answers
   are identical are dropped and counted: they carry no preference).
2. The judge picks the better one. **Choice of judge: the reward model** (reward_model.py). RLAIF as
   published prompts a large LM to compare the answers; the largest model this pipeline has (~1M
   parameters, trained on a synthetic world) cannot follow a comparison instruction at all - asked
   "which answer is better?" it continues the text, it does not judge. The reward model is the AI
   labeller that works here: trained on the offline pairs, it labels *new, on-policy* pairs nobody
   labelled, which is what RLAIF buys (labels for the model's own outputs, at no human cost). It is an
   AI judge with its own errors, and those are measured:
3. The judge's agreement with the ground truth: on the sampled pairs the rule of the prompt's original
   pair can decide (rule_judge.py; ties under the rule are left out), how often the judge picks the same
   answer. That is the ceiling on what DPO can learn from these labels.
4. DPO (dpo.py's train_preference, reference = the SFT model) on the self-labelled pairs; evaluated on the
   held-out human-labelled pairs like dpo.py.

Interview questions it answers:
- What does AI feedback replace, and what does it not? (the human labeller of each comparison; not the
  need for a judge that is better than the policy at telling answers apart - its errors become labels)
- Why on-policy pairs? (offline pairs show the policy contrasts it would never produce; pairs sampled from
  the policy itself are about the mistakes it actually makes)
- How would you check an AI judge? (agreement with a trusted judge on a sample - here the ground-truth
  rule - reported with coverage, before trusting its labels)
"""

import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "05_sft_lora")]
from common.cli import UserError, check_config, command_line, option, parse_config, run_cli
from common.files import write_json, write_jsonl
from common.layout import RunLayout, task_file
from common.runs import check_artifact, fresh_output, write_manifest
from common.devices import resolve_device
from sft_data import read_conversations  # 05_sft_lora

from dpo import DPOConfig, plot as plot_dpo, train_preference
from policy_io import frozen, load_reference, load_sft_policy
from preference_data import encode_response, pad_id_of, read_preference_pairs
from reward_scoring import reward_of_responses
from reward_scoring import load_pairs, load_reward_model
from rollouts import check_rollout_fits, decode_responses, sample_responses
from rule_judge import RULES, answers_by_question, judge


@dataclass
class RLAIFConfig:
    run: str = option("", "run folder runs/<name>: reads sft/, rm/ and data/tasks/")
    out: str = option("", "output folder; empty = <run>/rlaif")
    judge: str = option("", "the judge: a reward-model checkpoint; empty = <run>/rm/rm.pt")
    reference: str = option("", "π_ref checkpoint; empty = a frozen copy of the SFT model")
    prompts_file: str = option(
        "", "preference JSONL whose prompts are answered; empty = <run>/data/tasks/preference_train.jsonl"
    )
    heldout_file: str = option(
        "", "held-out human-labelled pairs; empty = <run>/data/tasks/preference_heldout.jsonl"
    )
    n_prompts: int = option(256, "prompts answered twice", min=1)
    max_new_tokens: int = option(24, "longest answer", min=1)
    temperature: float = option(1.0, "sampling temperature of the two answers", min=0.0)
    beta: float = option(0.1, "DPO's β", min=0.0)
    steps: int = option(60, "DPO steps", min=1)
    batch_size: int = option(16, "pairs per DPO step", min=1)
    lr: float = option(5e-5, "AdamW learning rate", min=0.0)
    eval_interval: int = option(20, "steps between held-out evaluations (and checkpoints)", min=1)
    seed: int = option(1337, "seed for the prompts, the sampling and the pair order")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    overwrite: bool = option(False, "replace the run already in the output folder")


def check_rlaif_config(cfg: RLAIFConfig):
    check_config(cfg)
    if not cfg.run:
        raise UserError("pass --run runs/<name> (the folder 05_sft_lora wrote sft/ into)")


def self_labelled_pairs(policy, judge_rm, tok, records, cfg, answers, device) -> tuple:
    """(encoded pairs for DPO, rows for pairs.jsonl, stats): two sampled answers per prompt, the judge's
    higher-scored one as chosen, and the ground-truth rule's verdict beside it where it decides."""
    prompts = [encode_response(tok, r["prompt"], "")[0] for r in records]
    check_rollout_fits(prompts, cfg.max_new_tokens, policy.cfg.block_size)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    responses = sample_responses(policy, tok, prompts, 2, cfg.max_new_tokens, cfg.temperature, g)
    scores = reward_of_responses(
        judge_rm, [p for p in prompts for _ in range(2)], responses, pad_id_of(tok), device
    )
    texts = decode_responses(tok, responses)
    encoded, rows, identical, agree, decided = [], [], 0, 0, 0
    for i, rec in enumerate(records):
        a, b = responses[2 * i], responses[2 * i + 1]
        if a == b or scores[2 * i] == scores[2 * i + 1]:
            identical += 1
            continue
        first_wins = bool(scores[2 * i] > scores[2 * i + 1])
        chosen, rejected = (a, b) if first_wins else (b, a)
        truth = None
        if rec["rule"] in RULES:
            question = rec["prompt"][-1]["content"]
            truth = judge(rec["rule"], texts[2 * i], texts[2 * i + 1], rec, answers.get(question))
        if truth:  # the rule decides this pair
            decided += 1
            agree += (truth > 0) == first_wins
        encoded.append(
            {"prompt_ids": prompts[i], "chosen_ids": chosen, "rejected_ids": rejected, "rule": "rlaif"}
        )
        rows.append(
            {
                "prompt": rec["prompt"],
                "chosen": texts[2 * i] if first_wins else texts[2 * i + 1],
                "rejected": texts[2 * i + 1] if first_wins else texts[2 * i],
                "rule": rec["rule"],
                "judge_margin": abs(scores[2 * i] - scores[2 * i + 1]).item(),
                "ground_truth_agrees": None if not truth else (truth > 0) == first_wins,
            }
        )
    stats = {
        "prompts": len(records),
        "pairs": len(encoded),
        "identical_skipped": identical,
        "decided_by_rule": decided,
        "judge_agreement": agree / decided if decided else None,
    }
    return encoded, rows, stats


def train_rlaif_run(cfg: RLAIFConfig, argv=None) -> dict:
    """Sample, judge, train DPO and write <out>/ (module docstring); returns the outcome."""
    check_rlaif_config(cfg)
    run, device = Path(cfg.run), resolve_device(cfg.device)
    out = Path(cfg.out) if cfg.out else run / "rlaif"
    policy, tok = load_sft_policy(run, device)
    reference = load_reference(cfg.reference, policy, tok, device)
    if cfg.judge:
        judge_path = Path(cfg.judge)
    else:
        check_artifact(RunLayout(run).rm, made_by=RunLayout(run).made_by("rm"))
        judge_path = RunLayout(run).rm / "rm.pt"
    judge_rm = frozen(load_reward_model(judge_path, tok, device))
    prompts_path = task_file(run, cfg.prompts_file, "preference_train.jsonl")
    held_path = task_file(run, cfg.heldout_file, "preference_heldout.jsonl")
    records = read_preference_pairs(prompts_path)[0]
    records = [
        records[i]
        for i in torch.randperm(len(records), generator=torch.Generator().manual_seed(cfg.seed))[
            : cfg.n_prompts
        ].tolist()
    ]
    heldout = load_pairs(tok, held_path, policy.cfg.block_size, "held-out")
    sft_files = [RunLayout(run).tasks / f"sft_{part}.jsonl" for part in ("train", "heldout")]
    answers = answers_by_question([r for f in sft_files if f.is_file() for r in read_conversations(f)])
    torch.manual_seed(cfg.seed)
    with fresh_output(out, cfg.overwrite) as tmp:  # the old run stays until this one succeeds
        t0 = time.time()
        encoded, rows, stats = self_labelled_pairs(policy, judge_rm, tok, records, cfg, answers, device)
        if not encoded:
            raise UserError(
                "every sampled pair had two identical answers; raise --temperature or --n-prompts"
            )
        agreement = "n/a" if stats["judge_agreement"] is None else f"{stats['judge_agreement']:.3f}"
        print(
            f"{stats['pairs']} self-labelled pairs ({stats['identical_skipped']} identical skipped); the judge agrees "
            f"with the ground-truth rule on {agreement} of the {stats['decided_by_rule']} pairs the rule decides"
        )
        dpo_cfg = DPOConfig(
            run=cfg.run,
            loss="dpo",
            beta=cfg.beta,
            steps=cfg.steps,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            eval_interval=cfg.eval_interval,
            seed=cfg.seed,
        )
        records_log = train_preference(
            policy,
            reference,
            encoded,
            heldout,
            dpo_cfg,
            pad_id_of(tok),
            device,
            tmp,
            RunLayout(run).tokenizer,
        )
        train_s = time.time() - t0
        ev = [r for r in records_log if "heldout_loss" in r]
        outcome = {
            "judge": os.path.relpath(judge_path, out),
            "labelling": stats,
            "heldout_before": ev[0],
            "heldout_after": ev[-1],
            "steps": cfg.steps,
            "train_s": train_s,
            "device": device,
            "tokenizer": os.path.relpath(RunLayout(run).tokenizer, out),
        }
        write_jsonl(tmp / "pairs.jsonl", rows)
        write_jsonl(tmp / "metrics.jsonl", records_log)
        write_json(tmp / "outcome.json", outcome)
        plot_dpo(records_log, dpo_cfg, tmp / "rlaif.png")
        inputs = [
            RunLayout(run).sft,
            judge_path if cfg.judge else RunLayout(run).rm,
            *[
                p if given else RunLayout(run).data
                for p, given in ((prompts_path, cfg.prompts_file), (held_path, cfg.heldout_file))
            ],
        ]
        write_manifest(
            tmp,
            stage="06_rlhf_dpo",
            command=command_line(__file__, argv),
            config=asdict(cfg),
            inputs=inputs + ([Path(cfg.reference)] if cfg.reference else []),
        )
    b, a = outcome["heldout_before"], outcome["heldout_after"]
    print(
        f"held-out human pairs: reward accuracy {b['heldout_reward_accuracy']:.3f} -> {a['heldout_reward_accuracy']:.3f}, "
        f"log π(y_w) > log π(y_l) {b['heldout_ranks_chosen']:.3f} -> {a['heldout_ranks_chosen']:.3f}"
    )
    print(f"rlaif: {cfg.steps} DPO steps, {train_s:.0f}s with the sampling; wrote {out}/")
    return outcome


def main(argv=None):
    cfg, _ = parse_config(RLAIFConfig, argv, doc=__doc__)
    train_rlaif_run(cfg, argv)


if __name__ == "__main__":
    run_cli(main)
