"""The verifiable task GRPO learns from: word problems with an integer answer, read from 01's task file
and scored by exact match of the number after "answer:" (the reward needs no model: it is the truth).

grpo.py is the command that trains on it; rl_compare.py evaluates every method with the same function.

    problems = read_problems("runs/tiny/data/tasks/arithmetic_heldout.jsonl")
    arithmetic_eval(policy, tok, problems, shots=[], max_new_tokens=16)   # {"pass@1_greedy": ..., ...}

Interview question it answers:
- Why a verifiable reward? (a reward model can be gamed; an exact answer check cannot, so the policy
  can only gain reward by solving more problems: the setting of DeepSeekMath's GRPO)
"""

import re
import sys
from pathlib import Path

import torch

# Cross-stage imports (README, "How the code is laid out").
REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "03_model"), str(REPO / "04_pretrain"), str(REPO / "05_sft_lora")]
from common.files import read_jsonl
from metrics import pass_at_k  # 05_sft_lora

from chat_template import encode_prompt  # 05_sft_lora

from rollouts import decode_responses, sample_responses
from alignment_bars import summary

NUMBER = re.compile(r"-?\d+")
FORMAT = re.compile(r"\s*The answer is (-?\d+)\.\s*")  # the answer format the reward checks


def read_problems(path) -> list:
    """Arithmetic records {prompt, answer (int)} from 01's JSONL (file and line named when one is broken)."""
    return read_jsonl(path, required=("prompt", "answer"), types={"prompt": str, "answer": int})


@torch.no_grad()
def arithmetic_eval(
    model, tok, problems, shots, max_new_tokens, n_samples=4, format_weight=0.5, seed=0
) -> dict:
    """pass@1 of the greedy answer, pass@1 estimated from n samples at temperature 1, mean sampled
    reward and the share of sampled answers in the format, over `problems`."""
    prompts = [problem_prompt(tok, p["prompt"], shots) for p in problems]
    greedy = decode_responses(tok, sample_responses(model, tok, prompts, 1, max_new_tokens, temperature=0))
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    sampled = decode_responses(tok, sample_responses(model, tok, prompts, n_samples, max_new_tokens, 1.0, g))
    scores = [
        arithmetic_reward(t, problems[i // n_samples]["answer"], format_weight) for i, t in enumerate(sampled)
    ]
    correct = [
        sum(s["correct"] for s in scores[i * n_samples : (i + 1) * n_samples]) for i in range(len(problems))
    ]
    right = [float(arithmetic_reward(t, p["answer"])["correct"]) for t, p in zip(greedy, problems)]
    return {
        "pass@1_greedy": sum(right) / len(problems),
        "pass@1_greedy_interval": summary(right)["interval"],  # Wilson 95 %
        "greedy_correct": right,  # per problem, for the paired bar
        "pass@1_sampled": sum(pass_at_k(n_samples, c, 1) for c in correct) / len(problems),
        "mean_reward": sum(s["reward"] for s in scores) / len(scores),
        "format_rate": sum(s["formatted"] for s in scores) / len(scores),
        "n": len(problems),
        "examples": [
            {"question": p["prompt"], "answer": p["answer"], "greedy": t}
            for p, t in zip(problems[:5], greedy)
        ],
    }


def arithmetic_reward(text: str, answer: int, format_weight=0.5) -> dict:
    """{"correct": the last number in the text equals the answer, "formatted": the text is exactly
    'The answer is N.', "reward": correct + format_weight · formatted}."""
    numbers = NUMBER.findall(text)
    correct = bool(numbers) and int(numbers[-1]) == int(answer)
    formatted = FORMAT.fullmatch(text) is not None
    return {
        "correct": correct,
        "formatted": formatted,
        "reward": float(correct) + format_weight * float(formatted),
    }


def problem_prompt(tok, question, shots) -> list:
    """Prompt ids: the solved examples as earlier turns, then the question, then <|assistant|>."""
    turns = [
        t
        for s in shots
        for t in (
            {"role": "user", "content": s["prompt"]},
            {"role": "assistant", "content": f"The answer is {s['answer']}."},
        )
    ]
    return encode_prompt(tok, turns + [{"role": "user", "content": question}])
