"""Plausible wrong answers to every exercise (mutants): each must make its grading tests fail.

A blanked body that raises NotImplementedError is the easy half of grading. A student's wrong answer
is rarely a missing body: it is an off-by-one, a wrong sign, a missing normalization. Each entry
below is one such answer, written as the text it replaces inside the exercise's marked lines:

    M(old, new, why)          old must occur exactly once between the exercise's markers

    python tests/exercises.py check --mutants     # apply each in a scratch copy; its tests must fail
    python tests/exercises.py make --bug 04_pretrain --out ~/drill   # one planted at random: find it

Keys are the exercise keys of `exercises.py list --json` ("stage/file.py:Qual.name"). When code
moves or an exercise is rewritten, `check` stops with "mutant N of exercise K: text not found":
repair the key or the text here. `survives="<why>"` marks a mutant no test can tell from the code
(the exercise really is ambiguous there); it is reported, not required to fail, and never planted.

Adding an exercise: write at least three mutants, the traps a student falls into (boundary `>` vs
`>=`, off-by-one, wrong axis or reduction, missing mask, mean vs sum, biased vs unbiased variance,
missing temperature or scale, a sign, an in-place op that breaks autograd, a dtype slip), run
`check --mutants --stage S`, and strengthen the grading tests until each fails: a hand-computed
number with its arithmetic in a comment, an edge case, or an independent reference (torch's own op,
a naive loop). Never loosen a tolerance to kill or spare a mutant.
"""

from typing import NamedTuple


class M(NamedTuple):
    old: str
    new: str
    why: str
    survives: str = ""


MUTANTS: dict[str, list[M]] = {
    # ------------------------------------------------------------------------------ 01_data
    "01_data/pii.py:luhn_ok": [
        M(
            "i % 2 == 0",
            "i % 2 == 1",
            "doubles the wrong digits (every 2nd from the right starts at the 2nd)",
        ),
        M("if d > 4", "if d > 5", "off by one: 2·5 = 10 also needs its digits summed (minus 9)"),
        M(
            "2 * d - 9 if",
            "2 * d % 10 if",
            "drops the carry: the digit sum of 2d > 9 is 2d - 9, not 2d mod 10",
        ),
    ],
    "01_data/dedup.py:jaccard": [
        M("max(1, len(a | b))", "max(1, len(a | b) + 1)", "off-by-one denominator"),
        M("max(1, len(a | b))", "max(1, len(a) + len(b))", "|A| + |B| counts the intersection twice"),
        M(
            "return len(a & b) / max(1, len(a | b))",
            "return len(a & b) / len(a | b) if a | b else 1.0",
            "two empty sets give 1, not 0",
        ),
    ],
    "01_data/dedup.py:minhash_signatures": [
        M("np.minimum.reduceat", "np.maximum.reduceat", "max instead of min over the shingles"),
        M(">> np.uint64(32)", "& np.uint64(0xFFFFFFFF)", "the low 32 bits instead of the high ones"),
        M("* x[None, :] + b[p0 : p0 + 16, None])", "* x[None, :])", "forgets the offset b_i"),
    ],
    "01_data/dedup.py:candidate_probability": [
        M("** r) ** b", "** b) ** r", "bands and rows swapped"),
        M(
            "1.0 - (1.0 - np.asarray(s, dtype=float) ** r) ** b",
            "np.minimum(1.0, b * np.asarray(s, dtype=float) ** r)",
            "the union bound b·s^r, not the probability",
        ),
        M(
            "1.0 - (1.0 - np.asarray(s, dtype=float) ** r) ** b",
            "1.0 - (1.0 - np.asarray(s, dtype=float)) ** (r * b)",
            "agreement of any one row, not of all r rows of a band",
        ),
    ],
    "01_data/dedup.py:candidate_pairs": [
        M(
            "sig[:, band * r : (band + 1) * r]",
            "sig[:, band : band + r]",
            "overlapping bands (offset band, not band·r)",
        ),
        M(
            "for band in range(b):",
            "for band in range(b - 1):",
            "off by one: the last band is never compared",
        ),
        M(
            "np.stack([first[m], order[m]], axis=1)",
            "np.stack([order[m], first[m]], axis=1)",
            "pairs as (j, i), j > i",
        ),
    ],
    "01_data/dedup.py:union_find_roots": [
        M("parent[max(ri, rj)] = min(ri, rj)", "parent[ri] = rj", "the root is not the smallest index"),
        M(
            "return np.array([find(i) for i in range(n)], dtype=np.int64)",
            "return np.array(parent, dtype=np.int64)",
            "parents, not roots: a chain is not compressed at the end",
        ),
        M(
            "ri, rj = find(int(i)), find(int(j))",
            "ri, rj = int(i), int(j)",
            "links the nodes, not their roots",
        ),
    ],
    "01_data/langid_ngram.py:train_langid": [
        M(
            "np.log(docs / docs.sum())",
            "np.full(len(docs), -np.log(len(docs)))",
            "a uniform prior, not document counts",
        ),
        M("cfg.alpha * cfg.buckets", "cfg.alpha", "add-alpha denominator without the number of buckets"),
        M(
            "counts.sum(1, keepdims=True)",
            "counts.sum(0, keepdims=True)",
            "normalized over languages, not n-grams",
        ),
    ],
    "01_data/langid_ngram.py:predict_lang": [
        M(
            "log_like[:, ids].sum(axis=1)",
            "log_like[:, ids].mean(axis=1)",
            "mean log-likelihood: the prior weighs too much",
        ),
        M("scores = log_prior + ", "scores = ", "forgets the prior"),
        M("log_like[:, ids]", "log_like[:, np.unique(ids)]", "each distinct n-gram counted once"),
    ],
    # -------------------------------------------------------------------------- 02_tokenizer
    "02_tokenizer/bpe_merges.py:merge_ids": [
        M(
            "            i += 2\n",
            "            i += 1\n",
            "after a merge steps one, so a token is used twice",
        ),
        M("while i < len(ids):", "while i < len(ids) - 1:", "drops the last id"),
        M(
            "ids[i] == a and ids[i + 1] == b",
            "(ids[i], ids[i + 1]) in (pair, pair[::-1])",
            "merges the pair in either order",
        ),
    ],
    "02_tokenizer/bpe_merges.py:train_merges_naive": [
        M("stats[p] += n", "stats[p] += 1", "pair counts not weighted by the word's count"),
        M("(stats[p], vocab[p[0]], vocab[p[1]])", "(stats[p], p)", "ties broken by id, not by bytes"),
        M("for p in zip(w, w[1:]):", "for p in set(zip(w, w[1:])):", "a pair counted once per word"),
    ],
    "02_tokenizer/bpe_merges.py:merge_counting_pairs": [
        M("            delta[pair] -= n\n", "", "the merged pair keeps its count"),
        M("                delta[out[-1], a] -= n\n", "", "the left neighbour pair keeps its count"),
        M(
            "delta[new_id, word[i + 2]] += n",
            "delta[new_id, word[i + 2]] += 1",
            "a new right pair counted once, not n",
        ),
    ],
    "02_tokenizer/bpe.py:BPETokenizer.bpe_piece": [
        M(
            "i = pair_ranks.index(best)",
            "i = len(pair_ranks) - 1 - pair_ranks[::-1].index(best)",
            "rightmost of equal ranks, not leftmost",
        ),
        M(
            "pair_ranks[i - 1] = get(parts[i - 1] + parts[i], inf)",
            "pass",
            "the left neighbour's rank is not recomputed",
        ),
        M(
            "i = pair_ranks.index(best)",
            "i = next(j for j, q in enumerate(pair_ranks) if q < inf)",
            "merges the first mergeable pair, not the lowest rank",
        ),
    ],
    "02_tokenizer/unigram.py:viterbi": [
        M(
            "range(max(0, j - max_len), j)",
            "range(max(0, j - max_len + 1), j)",
            "pieces of max_len chars never tried",
        ),
        M(
            "best[j], back[j] = best[i] + lp, i",
            "best[j], back[j] = lp, i",
            "forgets the score of the prefix",
        ),
        M(
            "return pieces[::-1], best[n]",
            "return pieces, best[n]",
            "pieces in back-pointer order (reversed)",
        ),
    ],
    "02_tokenizer/wordpiece.py:WordPieceTokenizer.tokenize_word": [
        M(
            "range(min(len(word), start + self.max_piece_chars), start, -1)",
            "range(start + 1, min(len(word), start + self.max_piece_chars) + 1)",
            "shortest match first",
        ),
        M(
            'piece = word[start:end] if start == 0 else "##" + word[start:end]',
            "piece = word[start:end]",
            "continuation pieces without '##'",
        ),
        M(
            'return ["[UNK]"]  # no piece matches here: the whole word is unknown, as in BERT',
            'piece, end = "[UNK]", start + 1',
            "one [UNK] per unmatched character, not the whole word",
        ),
    ],
    # ------------------------------------------------------------------------------ 03_model
    "03_model/decoding.py:KVCache.update": [
        M(
            "return self.k[layer][:, :, :end], self.v[layer][:, :, :end]",
            "return self.k[layer][:, :, self.pos : end], self.v[layer][:, :, self.pos : end]",
            "returns only the new keys, not the whole past",
        ),
        M(
            "return self.k[layer][:, :, :end], self.v[layer][:, :, :end]",
            "return self.k[layer], self.v[layer]",
            "returns the whole buffer: attention sees the unwritten zeros",
        ),
        M("if self.k[layer] is None:", "if True:", "allocates a new buffer every call: the past is lost"),
    ],
    "03_model/decoding.py:top_p_filter": [
        M(
            "mass_before >= p)",
            "mass_before > p)",
            "boundary: keeps a token when the mass before it equals p",
        ),
        M("probs.cumsum(dim=-1) - probs", "probs.cumsum(dim=-1)", "drops the token whose mass reaches p"),
        M(
            "torch.zeros_like(mass_before, dtype=torch.bool).scatter(1, order, mass_before >= p)",
            "mass_before >= p",
            "the mask in sorted order applied to unsorted logits",
        ),
    ],
    "03_model/gpt.py:RMSNorm.forward": [
        M("xf.pow(2).mean(-1, keepdim=True)", "xf.pow(2).sum(-1, keepdim=True)", "sum of squares, not mean"),
        M(
            "torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)",
            "1 / (xf.pow(2).mean(-1, keepdim=True).sqrt() + self.eps)",
            "eps outside the square root",
        ),
        M(").to(x.dtype) * self.weight", ").to(x.dtype)", "forgets the learned gain"),
        M(
            "(xf * torch.rsqrt(",
            "((xf - xf.mean(-1, keepdim=True)) * torch.rsqrt(",
            "subtracts the mean (LayerNorm)",
        ),
    ],
    "03_model/lm_loss.py:logsumexp": [
        M("lse = m + e.sum(", "lse = e.sum(", "forgets to add the max back"),
        M("return lse if keepdim else lse.squeeze(dim)", "return lse.squeeze(dim)", "ignores keepdim"),
        M("e.sum(dim=dim, keepdim=True)", "e.sum(dim=-1, keepdim=True)", "always sums the last dim"),
    ],
    "03_model/lm_loss.py:CrossEntropyAndZ.backward": [
        M("row = valid.to(e.dtype) / n", "row = valid.to(e.dtype)", "the gradient of a sum, not of the mean"),
        M("2 * grad_z * lse", "grad_z * lse", "d(lse²) = 2·lse·p: the 2 is missing"),
        M("(-grad_ce * row)", "(-grad_ce / n)", "ignored rows still get the -onehot term"),
    ],
    "03_model/mixture_of_experts.py:load_balancing_loss": [
        M(
            "return n_experts * (f * P).sum()",
            "return (f * P).sum()",
            "forgets the n_experts factor (1 at balance)",
        ),
        M("/ top_idx.numel()", "/ top_idx.shape[0]", "fractions per token, not per routing slot (sum to k)"),
        M(
            "torch.bincount(top_idx.flatten()",
            "torch.bincount(top_idx[:, 0]",
            "counts only each token's first choice",
        ),
    ],
    "03_model/position_encoding.py:apply_rope": [
        M(
            "torch.cat((a * cos - b * sin, a * sin + b * cos)",
            "torch.cat((a * cos + b * sin, b * cos - a * sin)",
            "rotates by -θ (half pairing)",
        ),
        M("xf[..., 0::2], xf[..., 1::2]", "xf.chunk(2, dim=-1)", "interleaved mode pairs (x_i, x_i+hd/2)"),
        M(
            "torch.stack((a * cos - b * sin, a * sin + b * cos)",
            "torch.stack((a * cos - b * sin, a * sin - b * cos)",
            "a sign slip: not a rotation",
        ),
    ],
    # --------------------------------------------------------------------------- 04_pretrain
    "04_pretrain/batches.py:unigram_loss": [
        M(
            ".astype(np.float64) + 1.0",
            ".astype(np.float64)",
            "no add-one smoothing: an unseen token costs inf",
        ),
        M(
            "-logp[np.asarray(val[:SCAN_TOKENS])].mean()",
            "-logp[np.asarray(val[:SCAN_TOKENS])].sum()",
            "sum, not mean",
        ),
        M(
            "np.bincount(np.asarray(train[:SCAN_TOKENS])",
            "np.bincount(np.asarray(val[:SCAN_TOKENS])",
            "fits on val",
        ),
        M("np.log(counts / counts.sum())", "np.log2(counts / counts.sum())", "bits, not nats"),
    ],
    "04_pretrain/batches.py:bits_per_byte": [
        M("/ math.log(2)", "* math.log(2)", "multiplies by ln 2"),
        M("loss * n_tokens / n_bytes", "loss * n_bytes / n_tokens", "bytes per token, inverted"),
        M("loss * n_tokens / n_bytes / math.log(2)", "loss * n_tokens / n_bytes", "nats per byte, not bits"),
    ],
    "04_pretrain/collectives.py:ring_bytes": [
        M('"all_reduce": 2 * per_half', '"all_reduce": per_half', "all-reduce is two ring passes, not one"),
        M("(world - 1) / world * n_bytes", "n_bytes / world", "one shard, not N-1 of them"),
        M('"broadcast": n_bytes', '"broadcast": per_half', "broadcast relays the whole payload"),
    ],
    "04_pretrain/collectives.py:step_traffic": [
        M(
            '"zero1": [("all_reduce", g), ("all_gather", g)]',
            '"zero1": [("reduce_scatter", g), ("all_gather", g)]',
            "ZeRO-1 as ZeRO-2 (it all-reduces the full gradient)",
        ),
        M(
            '"zero3": [("all_gather", g), ("all_gather", g), ("reduce_scatter", g)]',
            '"zero3": [("all_gather", g), ("reduce_scatter", g)]',
            "ZeRO-3 without the backward's second all-gather",
        ),
        M(
            '"ddp": [("all_reduce", g)]',
            '"ddp": [("broadcast", g)]',
            "DDP broadcasts instead of all-reducing",
        ),
    ],
    "04_pretrain/optimizers.py:clip_grad_norm": [
        M(".clamp(max=1.0)", "", "always rescales to max_norm, even a smaller gradient"),
        M(
            "coef = torch.where(torch.isfinite(total), coef, torch.ones_like(coef))",
            "pass",
            "an inf norm zeroes (nan) the gradients instead of leaving them",
        ),
        M("if max_norm > 0 and grads:", "if grads:", "max_norm 0 (off) zeroes every gradient"),
        M("    return total", "    return global_norm(grads)", "returns the norm after clipping"),
    ],
    "04_pretrain/optimizers.py:AdamW.step": [
        M("p.mul_(1 - lr * wd)", "p.mul_(1 - wd)", "decay not scaled by lr"),
        M("bc1, bc2 = 1 - b1**t, 1 - b2**t", "bc1, bc2 = 1.0, 1.0", "no bias correction"),
        M(
            "(v.sqrt() / bc2**0.5).add_(eps)",
            "((v + eps).sqrt() / bc2**0.5)",
            "eps inside the root",
        ),
        M("p.mul_(1 - lr * wd)", "g = g + wd * p", "L2 in the gradient (Adam), not decoupled decay (AdamW)"),
    ],
    "04_pretrain/optimizers.py:lr_at": [
        M("s.lr * (step + 1) / s.warmup_steps", "s.lr * step / s.warmup_steps", "warmup starts at lr 0"),
        M("return s.min_lr + (s.lr - s.min_lr) * 0.5", "return s.lr * 0.5", "cosine to 0, not to min_lr"),
        M("return s.lr + (s.min_lr - s.lr) * progress", "return s.lr * (1 - progress)", "wsd decays to 0"),
        M(
            "(step - s.warmup_steps) / max(1, s.max_steps - s.warmup_steps)",
            "step / max(1, s.max_steps)",
            "cosine progress not measured from the end of warmup",
        ),
    ],
    "04_pretrain/optimizers.py:DynamicLossScaler.update": [
        M(
            "self.scale *= self.backoff\n            self.good_steps = 0",
            "self.scale *= self.backoff",
            "an overflow does not restart the count",
        ),
        M(
            "self.good_steps >= self.growth_interval",
            "self.good_steps > self.growth_interval",
            "grows one step late",
        ),
        M(
            "self.scale *= self.growth\n                self.good_steps = 0",
            "self.scale *= self.growth",
            "keeps growing every step",
        ),
    ],
    # --------------------------------------------------------------------------- 05_sft_lora
    "05_sft_lora/chat_template.py:encode_chat": [
        M(
            "[trained] * (len(content) + 1)",
            "[trained] * len(content) + [0]",
            "the assistant's <|end|> is not trained",
        ),
        M("mask += [0] + [trained]", "mask += [trained] + [trained]", "the role marker is trained"),
        M("ids, mask = [sid[BOS]], [0]", "ids, mask = [], []", "no <|endoftext|> at the start"),
    ],
    "05_sft_lora/chat_template.py:token_logprobs": [
        M("return picked * keep", "return picked", "ignored targets are not zeroed"),
        M("F.log_softmax(logits.float(), dim=-1)", "logits.float()", "raw logits, not log-probabilities"),
        M("dim=-1)", "dim=1)", "softmax over time, not the vocabulary"),
    ],
    "05_sft_lora/lora.py:LoRALinear.forward": [
        M("(w * self.scale[name])", "w", "forgets α/r"),
        M("continue  # already inside self.weight", "pass", "a merged adapter is added twice"),
        M("y = F.linear(x, self.weight, self.bias)", "y = F.linear(x, self.weight)", "drops the bias"),
    ],
    "05_sft_lora/lora.py:merge_lora": [
        M(
            "m.weight += w * m.delta_weight(name)",
            "m.weight += m.delta_weight(name)",
            "ignores the adapter weight w",
        ),
        M("m.merged[name] = w", "pass", "does not record the merge: forward adds it again"),
        M("if name not in m.merged:", "if True:", "merges an adapter already merged"),
    ],
    "05_sft_lora/metrics.py:token_f1": [
        M(
            "normalize_answer(prediction).split(), normalize_answer(reference).split()",
            "prediction.lower().split(), reference.lower().split()",
            "tokens not normalized: punctuation and articles count",
        ),
        M(
            "sum((Counter(pred) & Counter(ref)).values())",
            "len(set(pred) & set(ref))",
            "overlap of sets, not bags",
        ),
        M("2 * p * r / (p + r)", "(p + r) / 2", "arithmetic mean, not harmonic"),
    ],
    "05_sft_lora/metrics.py:lcs_length": [
        M("diag + 1 if x == y", "up + 1 if x == y", "extends L[i-1][j], not the diagonal"),
        M("diag = up", "diag = row[j]", "the diagonal taken after the update"),
        M("max(up, row[j - 1])", "up", "forgets the left neighbour"),
    ],
    "05_sft_lora/packing.py:collate_packed": [
        M(
            "y = torch.full((len(rows), T), IGNORE",
            "y = torch.full((len(rows), T), pad_id",
            "padding is trained",
        ),
        M(
            "torch.tensor(yi),\n                i,",
            "torch.tensor(yi),\n                0,",
            "one segment per row",
        ),
        M("t += len(xi)", "t += len(xi) - 1", "examples overlap by one position"),
    ],
    # --------------------------------------------------------------------------- 06_rlhf_dpo
    "06_rlhf_dpo/preference_training.py:dpo_loss": [
        M(
            "-F.logsigmoid(chosen_rewards - rejected_rewards)",
            "-F.logsigmoid(rejected_rewards - chosen_rewards)",
            "DPO prefers the rejected answer",
        ),
        M(
            "beta * (policy_rejected - ref_rejected)",
            "beta * (policy_rejected - ref_chosen)",
            "reference log-prob of the other answer",
        ),
        M(
            "beta * (policy_chosen - ref_chosen)",
            "(policy_chosen - ref_chosen)",
            "forgets β on the chosen side",
        ),
    ],
    "06_rlhf_dpo/preference_training.py:ipo_loss": [
        M("1 / (2 * beta)", "1 / beta", "IPO's target margin is 1/(2β)"),
        M(") ** 2", ").abs()", "an absolute, not a squared, regression"),
        M(
            "(chosen_logratio - rejected_logratio - 1",
            "(beta * (chosen_logratio - rejected_logratio) - 1",
            "β scales the log-ratio gap, which IPO regresses unscaled",
        ),
    ],
    "06_rlhf_dpo/preference_training.py:simpo_loss": [
        M("rejected_rewards - gamma)", "rejected_rewards + gamma)", "SimPO's margin with the wrong sign"),
        M("beta * policy_rejected_mean", "policy_rejected_mean", "forgets β on the rejected side"),
        M("losses = -F.logsigmoid(", "losses = F.logsigmoid(", "maximizes the loss"),
    ],
    "06_rlhf_dpo/ppo.py:gae": [
        M("gamma * lam * next_mask * running", "gamma * next_mask * running", "forgets λ"),
        M("gamma * next_value * next_mask", "gamma * next_value", "bootstraps past the end of the answer"),
        M("(advantages + values) * mask", "advantages * mask", "returns A, not A + V"),
        M("for t in reversed(range(T)):", "for t in range(T):", "runs forward in time"),
    ],
    "06_rlhf_dpo/reward_model.py:bradley_terry_loss": [
        M(
            "F.softplus(-(r_chosen - r_rejected))",
            "F.softplus(r_chosen - r_rejected)",
            "prefers the rejected answer",
        ),
        M(".mean()", ".sum()", "sum over pairs, not mean"),
        M(
            "F.softplus(-(r_chosen - r_rejected)).mean()",
            "-torch.log(torch.sigmoid(r_chosen - r_rejected)).mean()",
            "log(sigmoid) overflows to inf at a large negative margin",
        ),
    ],
    "06_rlhf_dpo/rl_common.py:token_entropy": [
        M("logits = logits.float()", "pass", "entropy in the input dtype, not float32"),
        M(
            "(logits.softmax(dim=-1) * logits).sum(dim=-1)",
            "logits.mean(dim=-1)",
            "unweighted mean of the logits",
        ),
        M("torch.logsumexp(logits, dim=-1)", "logits.exp().sum(-1).log()", "logsumexp that overflows"),
    ],
    "06_rlhf_dpo/rl_common.py:group_normalized_advantages": [
        M("grouped.std(dim=1, keepdim=True)", "grouped.std(dim=1, keepdim=True, correction=0)", "biased std"),
        M("grouped.mean(dim=1, keepdim=True)", "raw.mean()", "one mean over all prompts, not per group"),
        M("raw.view(-1, group_size)", "raw.view(group_size, -1).T", "groups strided across prompts"),
    ],
    "06_rlhf_dpo/rl_common.py:clipped_policy_loss": [
        M(
            "-torch.minimum(unclipped, clipped)",
            "-torch.maximum(unclipped, clipped)",
            "optimistic: max, not min",
        ),
        M("torch.exp(log_probs - old_log_probs)", "torch.exp(old_log_probs - log_probs)", "inverted ratio"),
        M(
            '"clipped": clipped < unclipped',
            '"clipped": (ratio < 1 - clip_eps) | (ratio > 1 + clip_eps)',
            "out of range counted as clipped even where the clip did not win",
        ),
    ],
    "06_rlhf_dpo/rl_common.py:k3_kl": [
        M(
            "r = ref_log_probs - log_probs",
            "r = log_probs - ref_log_probs",
            "the log-ratio the wrong way round",
        ),
        M("torch.exp(r) - r - 1", "torch.exp(r) - r", "forgets the -1 (not 0 at equal policies)"),
        M("torch.exp(r) - r - 1", "0.5 * r**2", "k2, not k3"),
    ],
    # ---------------------------------------------------------------------- 07_distill_quant
    "07_distill_quant/serve_request.py:cut_at_stop": [
        M("min(hits)", "max(hits)", "cuts at the latest stop, not the earliest"),
        M("if i >= 0]", "if i > 0]", "misses a stop string at position 0"),
        M("text.find(s)", "text.rfind(s)", "the last occurrence of each stop"),
    ],
    "07_distill_quant/serve_request.py:held_back": [
        M(
            "range(min(len(s) - 1, len(text)), 0, -1)",
            "range(1, min(len(s) - 1, len(text)) + 1)",
            "the shortest prefix",
        ),
        M("n = max(n, k)", "n = k", "the last stop string wins, not the longest hold"),
        M('text.rstrip("\\ufffd")', "text.rstrip()", "strips whitespace, not replacement characters"),
    ],
    "07_distill_quant/slot_cache.py:SlotCache.move_columns": [
        M("        self.mask[:] = False\n", "", "stale mask columns stay visible"),
        M("s + shift for s in self.start", "s for s in self.start", "start columns not moved"),
        M("self.kv.pos += shift", "pass", "the cache's write position not moved"),
    ],
    "07_distill_quant/slot_cache.py:SlotCache.decode": [
        M("self.mask[:B, : self.pos + 1]", "self.mask[:B, : self.pos]", "the new token does not see itself"),
        M("        self.make_room()\n", "", "no room made at the last column"),
        M("self.kv.pos = rows.pos", "pass", "the write position does not advance"),
        M(
            "self.mask[active, self.pos] = True",
            "self.mask[:B, self.pos] = True",
            "inactive rows marked live",
            survives="harmless: an inactive row's logits are discarded and claim() resets its mask row",
        ),
    ],
    "07_distill_quant/batching.py:Engine.schedule": [
        M(
            'self.policy == "continuous" or not batch_running',
            "not batch_running",
            "continuous waits for the batch",
        ),
        M(
            "while self.waiting and None in self.slots:",
            "if self.waiting and None in self.slots:",
            "one per step",
        ),
        M(
            "req.slot = self.slots.index(None)",
            "req.slot = len(self.slots) - 1 - self.slots[::-1].index(None)",
            "the highest free row: padding rows below the running ones",
        ),
        M(
            "r is not None and r.finish_reason is None]",
            "r is not None]",
            "decodes finished requests",
            survives="Engine.step filters the decode list again (a prefill may finish a request)",
        ),
    ],
    "07_distill_quant/batching.py:Engine.free_finished": [
        M('self.policy == "static" and any(', "any(", "continuous batching also waits for the whole batch"),
        M(
            "and any(r.finish_reason is None",
            "and all(r.finish_reason is None",
            "static frees before its batch ends",
        ),
        M(
            "None if r is None or r.finish_reason else r",
            'None if r is None or r.finish_reason == "length" else r',
            "frees only requests that ran to max_tokens, not stopped or cancelled ones",
        ),
        M(
            'self.policy == "static"',
            'self.policy != "continuous"',
            "sequential treated as static",
            survives="sequential has one slot: waiting for its batch is waiting for its one request",
        ),
    ],
    "07_distill_quant/serve_workload.py:workload": [
        M("t += rng.expovariate(c.rate)", "t += 1 / c.rate", "evenly spaced arrivals, not Poisson"),
        M("rng.expovariate(c.rate)", "rng.expovariate(1 / c.rate)", "gaps of mean rate, not 1/rate"),
        M(
            "if rng.random() < c.long_frac",
            "if rng.random() > c.long_frac",
            "long with probability 1 - long_frac",
        ),
    ],
    "07_distill_quant/kd_losses.py:kd_loss": [
        M("return temperature**2 * kl.mean()", "return kl.mean()", "forgets T²"),
        M(
            "(log_p.exp() * (log_p - log_q))",
            "(log_q.exp() * (log_q - log_p))",
            "reverse KL(student ‖ teacher)",
        ),
        M("teacher_logits.float() / temperature", "teacher_logits.float()", "the teacher not softened by T"),
    ],
    "07_distill_quant/kd_losses.py:feature_loss": [
        M(
            "cosine_similarity(pred, target, dim=-1)",
            "cosine_similarity(pred, target, dim=0)",
            "cosine over positions",
        ),
        M(" / target.pow(2).mean().clamp(min=1e-8)", "", "plain MSE, not relative to the teacher's scale"),
        M("(pred - target).pow(2).mean()", "(pred - target).abs().mean()", "mean absolute error"),
    ],
    "07_distill_quant/gptq.py:HessianCollector.add": [
        M("+ x.shape[0]", "+ 1", "counts calls, not rows"),
        M("x.detach().reshape(-1, x.shape[-1])", "x.detach()[0]", "only the first sequence of the batch"),
        M("x.T @ x", "x.T @ x / x.shape[0]", "a mean per call: batches of different sizes weigh the same"),
    ],
    "07_distill_quant/gptq.py:inverse_hessian_cholesky": [
        M("H = H.clone()", "pass", "damps the caller's H in place"),
        M(
            "damp * H.diagonal().mean().clamp(min=1e-8)",
            "damp",
            "absolute damping, not relative to the diagonal",
        ),
        M("torch.linalg.cholesky(H_inv, upper=True)", "torch.linalg.cholesky(H_inv)", "the lower factor"),
    ],
    "07_distill_quant/gptq.py:gptq_columns": [
        M("err = (W[:, k] - w_hat) / U[k, k]", "err = W[:, k] - w_hat", "forgets to divide by U[k, k]"),
        M("W[:, k + 1 :] -= err", "W[:, k + 1 :] += err", "the OBS update with the wrong sign"),
        M("W[:, k + 1 :] -= err[:, None] * U[k, k + 1 :][None, :]", "pass", "no update: round to nearest"),
    ],
    "07_distill_quant/gptq.py:output_error": [
        M("float(torch.sqrt(", "float((", "the ratio of squares, no square root"),
        M("((W @ H) * W).sum()", "(W * W).sum()", "denominator without H"),
        M("((delta @ H) * delta).sum()", "(delta * delta).sum()", "numerator without H"),
    ],
    "07_distill_quant/prune.py:magnitude_masks": [
        M("int(fraction * flat.numel())", "round(fraction * flat.numel())", "rounds instead of flooring"),
        M("values.abs().flatten()", "values.flatten()", "drops the most negative, not the smallest |w|"),
        M(
            "argsort(stable=True)[:n_drop]",
            "argsort(stable=True, descending=True)[:n_drop]",
            "drops the largest",
        ),
    ],
    "07_distill_quant/structured_pruning.py:taylor_scores": [
        M(
            "torch.autograd.grad(loss, xi)[0].abs()",
            "torch.autograd.grad(loss, xi)[0]",
            "signed gradients cancel",
        ),
        M("return score / len(batches)", "return score", "sum over batches, not mean"),
        M("score += torch.autograd.grad", "score = torch.autograd.grad", "only the last batch"),
    ],
    "07_distill_quant/quant_linear.py:w8a8_matmul": [
        M("/ 127)", "/ 128)", "127 is the largest int8 code used"),
        M("x2.abs().amax(dim=-1)", "x2.abs().amax().expand(x2.shape[0])", "one scale for all tokens"),
        M(" * qw.scales.float()[None, :]", "", "forgets the weight scales"),
    ],
    "07_distill_quant/quant_granularity.py:fake_quantize": [
        M("qmax = 2 ** (bits - 1) - 1", "qmax = 2 ** (bits - 1)", "qmax 128 at 8 bits: +128 does not exist"),
        M(
            "lo = sets.amin(dim=-1, keepdim=True).clamp(max=0)",
            "lo = sets.amin(dim=-1, keepdim=True)",
            "0 not in range",
        ),
        M("s = ((hi - lo) / (2**bits - 1))", "s = ((hi - lo) / 2**bits)", "2^b steps, not 2^b - 1"),
    ],
    "07_distill_quant/serve.py:Handler.send_event": [
        M('+ b"\\n\\n"', '+ b"\\n"', "no blank line: events run together"),
        M("json.dumps(obj, ensure_ascii=False).encode()", "str(obj).encode()", "Python repr, not JSON"),
        M('b"data: "', 'b"event: "', "the wrong field name"),
    ],
    "07_distill_quant/speculative_decoding.py:accept_drafts": [
        M("u < p[i, d] / q[i, d]", "u < p[i, d]", "accepts with p, not p/q"),
        M("(p[i] - q[i]).clamp(min=0)", "p[i]", "resamples from p, not the residual"),
        M("p[len(drafts)], 1", "p[len(drafts) - 1], 1", "the bonus token from the last draft's position"),
    ],
    "07_distill_quant/speculative_decoding.py:expected_speedup": [
        M("a ** (k + 1)", "a**k", "k tokens, forgetting the bonus"),
        M("(k * cost_ratio + 1)", "(k * cost_ratio)", "forgets the target's own pass"),
        M("a = min(accept_rate, 1 - 1e-9)", "a = accept_rate", "divides by zero at acceptance 1"),
    ],
    # ------------------------------------------------------------------------------- kernels
    "kernels/attention_backends.py:causal_mask": [
        M("tril(diagonal=S - T)", "tril(diagonal=0)", "top-left aligned: wrong with a KV cache"),
        M(".tril(", ".triu(", "the upper triangle"),
        M("diagonal=S - T)", "diagonal=S - T - 1)", "a query cannot see itself"),
    ],
    "kernels/attention_backends.py:attention_naive": [
        M("1.0 / math.sqrt(D)", "1.0 / D", "scale 1/D, not 1/√D"),
        M("att.softmax(dim=-1)", "att.softmax(dim=-2)", "softmax over queries"),
        M("keep & mask", "keep | mask", "a padding mask that unmasks the future"),
        M('float("-inf")', "0.0", "masked scores set to 0, not -inf"),
    ],
    "kernels/attention_backends.py:attention_tiled_forward": [
        M("acc = acc * alpha[..., None] + p", "acc = acc + p", "the accumulator is not rescaled"),
        M("l = l * alpha + p.sum(dim=-1)", "l = l + p.sum(dim=-1)", "the normalizer is not rescaled"),
        M("lse[:, :, i0:i1] = m + torch.log(l)", "lse[:, :, i0:i1] = torch.log(l)", "lse without the max"),
        M("j0 > i1 - 1 + S - T", "j0 >= i1 - 1 + S - T", "skips the tile that holds the diagonal"),
    ],
    "kernels/attention_backends.py:attention_tiled_backward": [
        M("ds = p * (dp - delta[:, :, i0:i1, None])", "ds = p * dp", "forgets rowsum(dO∘O)"),
        M(
            "max(0, j0 - (S - T)) // block_m",
            "max(0, j1 - 1 - (S - T)) // block_m",
            "starts at the first row that sees the whole K tile, not any of it",
        ),
        M(
            "max(0, j0 - (S - T)) // block_m * block_m",
            "max(0, j0 - (S - T))",
            "Q tiles start at the first row that sees the K tile, not on the block grid",
            survives="the same rows, tiled differently: only a GPU grid needs the alignment",
        ),
        M("dq[:, :, i0:i1] += (ds @ kj) * scale", "dq[:, :, i0:i1] += ds @ kj", "dQ without the scale"),
        M(
            "dk = dk.view(B, Hkv, group, S, D).sum(dim=2)",
            "dk = dk.view(B, Hkv, group, S, D).mean(dim=2)",
            "GQA mean",
        ),
    ],
    "kernels/quant_matmul.py:asymmetric_scale_zero": [
        M("w.amin(dim=-1).clamp(max=0)", "w.amin(dim=-1)", "0 not in range"),
        M("/ (2**bits - 1))", "/ 2**bits)", "2^b steps, not 2^b - 1"),
        M("torch.round(-lo / scale.float())", "torch.floor(-lo / scale.float())", "floor, not round"),
    ],
    "kernels/quant_matmul.py:pack_int4": [
        M(
            "nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)",
            "(nibbles[..., 0::2] << 4) | nibbles[..., 1::2]",
            "the first value in the high nibble",
        ),
        M("q.to(torch.int16) & 0xF", "q.to(torch.int16)", "negative values not masked to 4 bits"),
        M(".to(torch.uint8)", ".to(torch.int8)", "int8, not uint8"),
    ],
    "kernels/quant_matmul.py:unpack_int4": [
        M("(lo ^ 8) - 8, (hi ^ 8) - 8", "lo - 8, hi - 8", "subtracts 8 from every nibble"),
        M("torch.stack((lo, hi)", "torch.stack((hi, lo)", "high nibble first"),
        M("p = packed.to(torch.int16)", "p = packed.to(torch.int8)", "int8 shifts carry the sign"),
    ],
}
